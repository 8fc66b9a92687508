"""docs/troubleshooting.md quotes messages the code still prints.

Every entry's heading is the message in a code span (### `error: ... matches no files`),
``...`` standing for the variable parts. Each fixed part (the text between the ``...``) must
occur in one string literal of the package's source (an f-string's literal pieces count
separately), so a reworded message fails here until the page follows. The ```console
examples under an entry must show its message too.
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import pytest

import mmpretrain
import mmpretrain.configs
import mmpretrain.connectors
import mmpretrain.data
import mmpretrain.encoders

PAGE = Path(__file__).resolve().parents[1] / "docs" / "troubleshooting.md"
# The packages whose source prints messages (data/, encoders/, ... install as mmpretrain.*).
PACKAGES = (mmpretrain, mmpretrain.data, mmpretrain.encoders, mmpretrain.connectors, mmpretrain.configs)
# `mmpt` prints a UserError as "error: " + its text (mmpretrain/cli.py main()).
ERROR_PREFIX = "error: "
HEADING = re.compile(r"^### (`+) ?(.+?) ?\1\s*$")
MIN_ENTRIES = 25


def _entries() -> list[tuple[str, list[str]]]:
    """(message, lines of the entry's body) for every quoted heading of the page."""
    entries: list[tuple[str, list[str]]] = []
    for line in PAGE.read_text(encoding="utf-8").splitlines():
        match = HEADING.match(line)
        if match:
            entries.append((match.group(2), []))
        elif line.startswith("#"):
            entries.append(("", []))  # another heading ends the entry
        elif entries:
            entries[-1][1].append(line)
    return [(message, body) for message, body in entries if message]


def _pieces(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.JoinedStr):
        return [v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str)]
    return []


@functools.lru_cache(maxsize=1)
def source_strings() -> tuple[str, ...]:
    """Every string literal (and literal piece of an f-string) in the package's source,
    whitespace collapsed as `mmpt` prints a message on one line."""
    files = {path for package in PACKAGES for root in package.__path__ for path in Path(root).rglob("*.py")}
    strings: set[str] = set()
    for path in sorted(files):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            strings.update(" ".join(piece.split()) for piece in _pieces(node))
    return tuple(strings)


def fixed_parts(message: str) -> list[str]:
    """The text between the ``...`` of ``message``, without the CLI's "error: " prefix."""
    text = message.removeprefix(ERROR_PREFIX)
    return [part.strip() for part in text.split("...") if part.strip()]


ENTRIES = _entries()


def test_the_page_has_its_entries() -> None:
    assert len(ENTRIES) >= MIN_ENTRIES, f"expected {MIN_ENTRIES}+ quoted headings in {PAGE.name}"
    assert any(f'"{ERROR_PREFIX}"' in Path(root, "cli.py").read_text() for root in mmpretrain.__path__)


@pytest.mark.parametrize("message", [message for message, _ in ENTRIES], ids=[m[:70] for m, _ in ENTRIES])
def test_quoted_message_is_in_the_source(message: str) -> None:
    parts = fixed_parts(message)
    assert parts and max(map(len, parts)) >= 12, f"{message!r} quotes too little to check"
    strings = source_strings()
    missing = [part for part in parts if not any(part in string for string in strings)]
    assert not missing, (
        f"{PAGE.name}: the heading {message!r} quotes {missing} which no string in the source holds: "
        "was the message reworded? Update the page (and its examples) to what the code prints."
    )


@pytest.mark.parametrize("message,body", ENTRIES, ids=[m[:70] for m, _ in ENTRIES])
def test_examples_show_the_quoted_message(message: str, body: list[str]) -> None:
    """Each `error:` line in the entry's examples has the heading's fixed parts, in order."""
    examples = [line for line in body if line.startswith(("error: ", "internal error: "))]
    for line in examples:
        position = 0
        for part in fixed_parts(message):
            found = line.find(part, position)
            assert found >= 0, f"{PAGE.name}: example {line!r} does not show {part!r} of {message!r}"
            position = found + len(part)


def test_fixed_parts() -> None:
    assert fixed_parts("error: shard pattern ... matches no files; check the path") == [
        "shard pattern",
        "matches no files; check the path",
    ]
    assert fixed_parts("internal error: ... (run again)") == ["internal error:", "(run again)"]
