"""Fuzzing the config and the command line (hypothesis, in-process ``mmpretrain.cli.main``).

Every invalid input -- a config value of the wrong type or out of range, an unknown key, a
malformed ``--set``, a config file of random YAML, a missing data, tokenizer or model
path, a random command line -- exits 2 with exactly one line on stderr, never a traceback
or an internal error, and leaves no run directory behind.

The default run tries a few dozen examples per property (derandomized: the same ones every
time); the ``slow`` variants try many more, with fresh random seeds.
"""

from __future__ import annotations

import io
import json
import math
import string
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from reliability_helpers import tiny_run_config, write_yaml

from mmpretrain.cli import main
from mmpretrain.config import apply_overrides, validate_config
from mmpretrain.errors import ConfigError

QUICK = settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
    ],
)
THOROUGH = settings(QUICK, max_examples=300, derandomize=False)


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def assert_one_line_user_error(code: int, err: str, argv: list[str]) -> None:
    assert code == 2, (argv, code, err)
    assert "Traceback" not in err and "internal error" not in err, (argv, err)
    assert err.endswith("\n") and err.count("\n") == 1 and err.startswith("error:"), (argv, err)


class Workspace:
    """A directory holding the base config; every run directory goes below it."""

    def __init__(self, root: Path, shards: Path, tokenizer: Path) -> None:
        self.root = root
        self.base = tiny_run_config(shards, tokenizer, train={"max_steps": 2})
        self.config = write_yaml(root / "base.yaml", self.base)
        (root / "runs").mkdir()  # run directories go below; the parent itself is no run directory
        self.count = 0

    def run_dir(self) -> Path:
        self.count += 1
        return self.root / "runs" / f"run{self.count}"

    def entries(self) -> set[str]:
        return {p.name for p in self.root.iterdir()} | {
            f"runs/{p.name}" for p in (self.root / "runs").glob("*")
        }


@pytest.fixture
def workspace(
    tmp_path: Path, shards_and_tokenizer: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> Workspace:
    shards, tokenizer = shards_and_tokenizer
    monkeypatch.chdir(tmp_path)  # `runs/<config>` (the default run directory) lands here
    space = Workspace(tmp_path, shards, tokenizer)
    run_cli(["train", str(space.config), "--run-dir", str(space.run_dir()), "--set", "train.max_steps=0"])
    return space  # (that first call imported everything: its warnings are not under test)


def check_train_fails_cleanly(space: Workspace, extra: list[str], config: Path | None = None) -> None:
    before = space.entries()
    run_dir = space.run_dir()
    argv = ["train", str(config or space.config), "--run-dir", str(run_dir), *extra]
    code, _, err = run_cli(argv)
    assert_one_line_user_error(code, err, argv)
    assert not run_dir.exists(), f"half-made run directory after {argv}"
    assert space.entries() <= before | {p.name for p in space.root.glob("*.yaml")}, argv


# ---------------------------------------------------------------------------- config values


def fuzzed_keys() -> list[str]:
    from mmpretrain.config_schema import schema_rows
    from mmpretrain.run_config import RunConfig

    keys = set()
    for row in schema_rows(RunConfig):
        key = row.key.replace("model.llm[llama].", "model.llm.")
        if row.type == "section" or "[" in key:
            continue
        if key.startswith(("train.", "optim.", "distributed.", "model.llm.", "data.")):
            keys.add(key)
    return sorted(keys)


KEYS = fuzzed_keys()
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(
        ["", "-1", "0", "1e309", "nan", "-inf", "yes", "~", "[1, 2", "{a: 1}", "!!python/tuple [1]"]
    ),
)
VALUES = st.one_of(
    SCALARS, st.lists(SCALARS, max_size=3), st.dictionaries(st.text(max_size=5), SCALARS, max_size=2)
)


def as_yaml(value: Any) -> str:
    if isinstance(value, str):
        return value  # raw: the CLI parses it as YAML (broken YAML included)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return json.dumps(value)


def is_valid(space: Workspace, overrides: list[str]) -> bool:
    from mmpretrain.run_config import RunConfig

    try:
        validate_config(RunConfig, apply_overrides(space.base, overrides), "fuzz")
    except ConfigError:
        return False
    return True


def invalid_value_property(space: Workspace, key: str, value: Any) -> None:
    override = f"{key}={as_yaml(value)}"
    assume(not is_valid(space, [override]))  # valid values would start training: not this test
    check_train_fails_cleanly(space, ["--set", override])


@QUICK
@given(key=st.sampled_from(KEYS), value=VALUES)
def test_invalid_config_values_exit_2_with_one_line(workspace: Workspace, key: str, value: Any) -> None:
    invalid_value_property(workspace, key, value)


@pytest.mark.slow
@THOROUGH
@given(key=st.sampled_from(KEYS), value=VALUES)
def test_invalid_config_values_exit_2_with_one_line_thorough(
    workspace: Workspace, key: str, value: Any
) -> None:
    invalid_value_property(workspace, key, value)


IDENTIFIERS = st.text(alphabet=string.ascii_letters + "_", min_size=1, max_size=10)
MALFORMED_SETS = st.one_of(
    st.builds(lambda k: f"{k}.{k}.nope={k}", IDENTIFIERS),  # unknown keys
    st.builds(
        lambda s, k: f"{s}.{k}=1", st.sampled_from(["train", "optim", "model.llm", "data"]), IDENTIFIERS
    ),
    st.sampled_from(["", "=", "train", "train.=1", ".train=1", "train..seed=1", "train.seed.x=1", "a=b=c"]),
    st.text(max_size=20).filter(lambda t: "=" not in t),
)


def malformed_set_property(space: Workspace, text: str) -> None:
    assume(not is_valid(space, [text]) if "=" in text and text.split("=")[0].strip() else True)
    check_train_fails_cleanly(space, ["--set", text])


@QUICK
@given(text=MALFORMED_SETS)
def test_malformed_and_unknown_overrides_exit_2(workspace: Workspace, text: str) -> None:
    malformed_set_property(workspace, text)


@pytest.mark.slow
@THOROUGH
@given(text=MALFORMED_SETS)
def test_malformed_and_unknown_overrides_exit_2_thorough(workspace: Workspace, text: str) -> None:
    malformed_set_property(workspace, text)


YAML_TEXT = st.one_of(
    st.text(max_size=80),
    st.builds(
        lambda v: yaml.safe_dump(v),
        st.recursive(
            SCALARS,
            lambda c: st.lists(c, max_size=3) | st.dictionaries(IDENTIFIERS, c, max_size=3),
            max_leaves=8,
        ),
    ),
    st.sampled_from(
        [
            "base: base.yaml\nbase: x\n",
            "base: [base.yaml, base.yaml]\n",
            "base: nonexistent\n",
            "base: loop.yaml\n",
            ":\n  - [",
            "\t",
            "!!python/object/apply:os.system ['true']\n",
            "a: &a [*a]\n",
            "model: {llm: {name: nonexistent}}\n",
            "\x00\x01",
        ]
    ),
)


def config_file_property(space: Workspace, text: str) -> None:
    path = space.root / "fuzzed.yaml"
    (space.root / "loop.yaml").write_text("base: fuzzed.yaml\n", encoding="utf-8")
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    try:
        from mmpretrain.config import load_config

        load_config(path)
        valid = True
    except ConfigError:
        valid = False
    assume(not valid)
    check_train_fails_cleanly(space, [], config=path)


@QUICK
@given(text=YAML_TEXT)
def test_random_config_files_exit_2(workspace: Workspace, text: str) -> None:
    config_file_property(workspace, text)


@pytest.mark.slow
@THOROUGH
@given(text=YAML_TEXT)
def test_random_config_files_exit_2_thorough(workspace: Workspace, text: str) -> None:
    config_file_property(workspace, text)


# ---------------------------------------------------------------------------- valid schema, bad world


MISSING = st.builds(lambda name: f"/nonexistent/{name}", IDENTIFIERS)
WORLD_ERRORS = st.one_of(
    st.builds(lambda p: f'data.sources=[{{"format": "shards", "paths": ["{p}"]}}]', MISSING),
    st.builds(lambda p: f'data.sources=[{{"format": "jsonl", "paths": ["{p}.jsonl"]}}]', MISSING),
    st.builds(lambda p: f"data.tokenizer.path={p}", MISSING),
    st.builds(lambda p: f"model.llm.pretrained={p}", MISSING),
    st.builds(lambda p: f"train.init_from={p}", MISSING),
    st.builds(lambda n: f"model.llm.vocab_size={n}", st.integers(min_value=1, max_value=299)),
)


@QUICK
@given(override=WORLD_ERRORS)
def test_missing_files_and_mismatches_exit_2_without_a_run_directory(
    workspace: Workspace, override: str
) -> None:
    """Schema-valid configs that fail once the run starts (a missing data, tokenizer or
    model path; a vocabulary smaller than the tokenizer's): one line, and the run
    directory the failed start had created is gone."""
    assert is_valid(workspace, [override])
    check_train_fails_cleanly(workspace, ["--set", override])


# ---------------------------------------------------------------------------- command lines


TOKENS = st.sampled_from(
    ["train", "eval", "export", "data", "build", "stats", "inspect", "tokenizer", "decode", "config",
     "schema", "show", "list", "plot", "frobnicate", "--set", "--run-dir", "--resume", "--overwrite",
     "--nproc", "--task", "--shots", "--limit", "--to", "--out", "--format", "--input", "--json",
     "--kind", "--vocab-size", "--ids", "--bogus", "-x", "--", "0", "-1", "abc", "hf", "x=1",
     "train.seed=oops", "/nonexistent/path", "nonexistent.yaml", "encoders", "kernels"]
)  # fmt: skip
ARGV = st.lists(st.one_of(TOKENS, st.text(alphabet=string.printable.strip(), max_size=8)), max_size=7)


def argv_property(space: Workspace, argv: list[str]) -> None:
    # nothing here can name real data or a shipped config: a valid command does no real work
    assume(not any(a in ("demo", "shakespeare", "tiny", "-h", "--help", "--version") for a in argv))
    assume(not any(a.startswith(("-h", "--h", "--v")) for a in argv))
    before = space.entries()
    code, _, err = run_cli(argv)
    if code != 0:
        assert_one_line_user_error(code, err, argv)
    assert space.entries() == before, argv


@QUICK
@given(argv=ARGV)
def test_random_command_lines_exit_0_or_2_with_one_line(workspace: Workspace, argv: list[str]) -> None:
    argv_property(workspace, argv)


@pytest.mark.slow
@THOROUGH
@given(argv=ARGV)
def test_random_command_lines_exit_0_or_2_with_one_line_thorough(
    workspace: Workspace, argv: list[str]
) -> None:
    argv_property(workspace, argv)


@pytest.mark.parametrize(
    "override", ["optim.lr=.inf", "optim.lr=1e309", "train.grad_clip=.nan", "optim.eps=-.inf"]
)
def test_non_finite_numbers_are_config_errors(workspace: Workspace, override: str) -> None:
    """inf passes a `gt=0` bound; no config number may be inf or nan (found by the fuzz:
    `optim.lr=1e309` trained a step, then stopped on NaN with a run directory behind)."""
    assert not is_valid(workspace, [override])
    check_train_fails_cleanly(workspace, ["--set", override])
