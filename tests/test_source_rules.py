"""Source-level security rules that a reviewer would otherwise have to remember."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CODE_DIRS = ("mmpretrain", "data", "encoders", "connectors", "scripts", "tests")


def python_files() -> list[Path]:
    return [p for d in CODE_DIRS for p in (REPO / d).rglob("*.py")]


def test_every_torch_load_uses_weights_only_true() -> None:
    offenders = []
    for path in python_files():
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(r"torch\.load\(", text):
            call = text[match.start() : text.find(")", match.start()) + 1]
            if "weights_only=True" not in call and path.name != "test_source_rules.py":
                offenders.append(f"{path.relative_to(REPO)}: {call}")
    assert not offenders, offenders


def test_no_pickle_and_no_remote_code_by_default() -> None:
    for path in python_files():
        if path.name == "test_source_rules.py":
            continue
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"^\s*import pickle|pickle\.loads?\(", text, re.M), path
        assert "trust_remote_code=True" not in text, path
