"""The pages in docs/ match the code: the generated configuration reference is up to date,
documents every key `mmpt config schema` lists, and every repository path a page names exists."""

from __future__ import annotations

import difflib
import re
from pathlib import Path

import pytest

from mmpretrain.cli import main
from mmpretrain.config_schema import (
    REFERENCE_COMMAND,
    SchemaRow,
    format_markdown,
    reference_page,
    schema_rows,
)

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
REFERENCE = DOCS / "configuration.md"

_CELL_SPLIT = re.compile(r"(?<!\\)\|")
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
_INLINE_CODE = re.compile(r"`([^`\n]+)`")
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def _uncode(cell: str) -> str:
    """A table cell back to its text: strip a code span and unescape pipes."""
    cell = cell.strip()
    if cell.startswith("``") and cell.endswith("``") and len(cell) >= 4:
        cell = cell[2:-2].strip()
    elif cell.startswith("`") and cell.endswith("`") and len(cell) >= 2:
        cell = cell[1:-1]
    return cell.replace("\\|", "|")


def parse_tables(markdown: str) -> list[SchemaRow]:
    """Every key row of the markdown tables (header and rule lines skipped)."""
    rows = []
    for line in markdown.splitlines():
        if not line.startswith("| ") or line.startswith(("| Key |", "|---")):
            continue
        cells = _CELL_SPLIT.split(line)[1:-1]
        assert len(cells) == 4, f"table row with {len(cells)} cells: {line}"
        rows.append(SchemaRow(*(_uncode(c) for c in cells)))
    return rows


def test_configuration_reference_is_in_sync() -> None:
    expected = reference_page()
    actual = REFERENCE.read_text(encoding="utf-8") if REFERENCE.is_file() else ""
    if actual != expected:
        diff = "".join(
            list(
                difflib.unified_diff(
                    actual.splitlines(keepends=True),
                    expected.splitlines(keepends=True),
                    "docs/configuration.md",
                    "generated",
                )
            )[:40]
        )
        pytest.fail(
            f"docs/configuration.md is out of date with the config classes; regenerate it with\n"
            f"    {REFERENCE_COMMAND}\nand commit it. First differences:\n{diff}"
        )


def test_cli_markdown_prints_the_reference(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(capsys, "config", "schema", "--markdown") == reference_page()
    section = _run(capsys, "config", "schema", "--markdown", "optim")
    assert section.startswith("## optim\n")
    keys = {r.key for r in parse_tables(section)}
    assert "optim.lr" in keys and not any(k.startswith("train.") for k in keys)


def test_every_listed_key_is_documented(capsys: pytest.CaptureFixture[str]) -> None:
    """Keys as `mmpt config schema` prints them (plain text) against the reference's tables
    parsed back: none missing, and each documented row equals the schema's."""
    out = _run(capsys, "config", "schema")
    listed = [line.split()[0] for line in out.splitlines()[1:] if line.strip()]
    documented = parse_tables(REFERENCE.read_text(encoding="utf-8"))
    doc_keys = {r.key for r in documented}
    missing = [k for k in listed if k not in doc_keys]
    assert len(listed) > 300 and not missing, (
        f"{len(missing)} keys of `mmpt config schema` are not in docs/configuration.md, e.g. "
        f"{missing[:5]}; regenerate it with `{REFERENCE_COMMAND}`"
    )
    from mmpretrain.recipes.config import RecipeConfig
    from mmpretrain.run_config import RunConfig

    expected = schema_rows(RunConfig, builtin_only=True) + schema_rows(RecipeConfig, builtin_only=True)
    assert len(documented) == len(expected)  # the same rows (tables group them by component)
    assert {r.key: r for r in documented} == {r.key: r for r in expected}
    for key in ("stages.<name>.steps", "monitor.every", "data.sources[jsonl].field", "model.kernels[].match"):
        assert key in doc_keys, key


def test_example_error_in_reference_is_real(capsys: pytest.CaptureFixture[str]) -> None:
    from mmpretrain.config_schema import _EXAMPLE_ERROR

    code = main(["config", "show", "tiny", "--set", "distributed.backnd=ddp"])
    _, err = capsys.readouterr()
    assert code == 2
    shown = _EXAMPLE_ERROR.split("tiny.yaml: ", 1)[1]
    assert err.strip().split("tiny.yaml: ", 1)[1] == shown


def test_markdown_cells_round_trip() -> None:
    """Pipes and backticks in any cell survive: a table row parses back to the same row."""
    rows = [
        SchemaRow("a.b", "'x' | 'y'", "'|'", "either `x | y` or | z"),
        SchemaRow("a.c", "str", "'`q`'", ""),
        SchemaRow("a[m].d", "int", "1", "a member key"),
    ]
    text = format_markdown(rows)
    assert text.startswith("## a\n") and "### `a[m]`" in text
    assert parse_tables(text) == rows


def _doc_pages() -> list[Path]:
    pages = sorted(DOCS.glob("*.md"))
    assert {"configuration.md", "architecture.md", "data-format.md"} <= {p.name for p in pages}
    return pages


def test_paths_named_in_docs_exist() -> None:
    """Every `path/like/this` in a page's prose that starts at a top-level folder of the
    repository exists, and every relative link stays inside the repository and exists."""
    tops = {"mmpretrain", "data", "encoders", "connectors", "configs", "tests", "scripts", "docs"}
    problems = []
    checked = 0
    for page in _doc_pages():
        text = page.read_text(encoding="utf-8")
        prose = _FENCE.sub("", text)
        for token in _INLINE_CODE.findall(prose):
            token = token.strip()
            first = token.split("/", 1)[0]
            if "/" not in token or first not in tops or re.search(r"[\s*{}<>]|NAME|NN", token):
                continue  # not a repository path (a key, a glob, a placeholder)
            checked += 1
            if not (ROOT / token.rstrip("/")).exists():
                problems.append(f"{page.name}: `{token}` does not exist")
        for target in _LINK.findall(prose):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = (page.parent / target.split("#", 1)[0]).resolve()
            if not path.is_relative_to(ROOT) or not path.exists():
                problems.append(f"{page.name}: link ({target}) leaves the repository or does not exist")
    assert checked > 20, "expected the pages to name repository files"
    assert not problems, "\n".join(problems)
