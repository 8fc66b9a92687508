"""The terminal experience of `mmpt`: help with examples on every command, --quiet and
--verbose, progress on stderr and results on stdout, no ANSI escapes off a terminal or
with NO_COLOR."""

from __future__ import annotations

import argparse
import io
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from mmpretrain import cli, terminal
from mmpretrain.cli import build_parser, main
from tests.train.conftest import make_corpus, tiny_run_config

ANSI = "\x1b["


class FakeTerminal(io.StringIO):
    """A stream that says it is a terminal (as stderr is in an interactive shell)."""

    def isatty(self) -> bool:
        return True


def walk(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], str]]:
    """Every command under ``parser``: (its words, its one-line help)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                yield (*path, name), helps.get(name) or ""
                yield from walk(sub, (*path, name))


def subparser(words: tuple[str, ...]) -> argparse.ArgumentParser:
    parser = build_parser()
    for word in words:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[word]
    return parser


# ---------------------------------------------------------------------------- help


def test_every_command_has_a_help_line_and_examples_of_itself() -> None:
    commands = dict(walk(build_parser()))
    assert {("data", "build"), ("tokenizer", "train"), ("config", "show"), ("demo",)} <= set(commands)
    for words, help_line in commands.items():
        name = " ".join(words)
        assert help_line.strip(), f"`mmpt {name}` has no help line"
        parser = subparser(words)
        epilog = parser.epilog or ""
        assert epilog.startswith("examples:\n"), f"`mmpt {name} --help` shows no examples"
        examples = [line.strip() for line in epilog.splitlines()[1:] if line.strip().startswith("mmpt ")]
        assert any(f" {name} " in f"{line.split('#')[0]} " for line in examples), (
            f"`mmpt {name} --help`: no example runs `mmpt {name}`"
        )
        assert "examples:\n  mmpt " in parser.format_help()  # line breaks kept


def test_top_level_help_has_examples_and_the_terminal_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "examples:\n  mmpt " in out and "NO_COLOR" in out
    assert "-q, --quiet" in out and "-v, --verbose" in out


# ---------------------------------------------------------------------------- --quiet / --verbose


@pytest.mark.parametrize(
    "argv",
    [["--quiet", "list", "encoders"], ["list", "encoders", "--quiet"], ["-q", "list", "encoders"]],
    ids=" ".join,
)
def test_quiet_before_or_after_the_command_keeps_the_result(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert build_parser().parse_args(argv).quiet is True
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert out.startswith("encoders: ") and err == ""


def test_quiet_flag_between_command_words_is_accepted() -> None:
    args = build_parser().parse_args(["data", "--quiet", "stats", "x.tar"])
    assert args.quiet is True and args.shards == "x.tar"
    assert not hasattr(build_parser().parse_args(["list"]), "quiet")  # SUPPRESS: unset unless given


def test_quiet_and_verbose_together_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--quiet", "list", "--verbose"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "--quiet and --verbose contradict each other" in err and err.count("\n") == 1


def test_quiet_still_prints_user_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--quiet", "config", "show", "missing.yaml"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: config 'missing.yaml'") and err.count("\n") == 1


def test_verbose_shows_info_logs_and_quiet_hides_stderr(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def noisy(args: argparse.Namespace) -> int:
        logging.getLogger("mmpretrain.data.mixing").info("mixing weights: text 0.7")
        terminal.status("reading shards")
        print("the result")
        return 0

    monkeypatch.setattr(cli, "_cmd_list", noisy)
    assert main(["list"]) == 0
    out, err = capsys.readouterr()
    assert out == "the result\n" and err == "reading shards\n"
    assert main(["--verbose", "list"]) == 0
    out, err = capsys.readouterr()
    assert out == "the result\n" and "INFO mmpretrain.data.mixing: mixing weights: text 0.7" in err
    assert main(["list", "--quiet"]) == 0
    assert capsys.readouterr() == ("the result\n", "")
    assert logging.getLogger("mmpretrain").handlers == []  # --verbose cleaned up after itself


# ---------------------------------------------------------------------------- progress


def test_progress_is_plain_lines_off_a_terminal_and_nothing_when_quiet(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with terminal.StderrProgress("eval shapes 0-shot", 8, "queries") as progress:
        for _ in range(8):
            progress.advance()
    out, err = capsys.readouterr()
    assert out == "" and ANSI not in err
    assert err.splitlines() == [f"eval shapes 0-shot: {n}/8 queries" for n in (2, 4, 6, 8)]
    with terminal.verbosity(-1), terminal.StderrProgress("x", 4) as progress:
        progress.advance(4)
    assert capsys.readouterr() == ("", "")


def test_a_bar_only_on_a_terminal_without_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.delenv("NO_COLOR", raising=False)
    for no_color, expect_bar in ((None, True), ("1", False)):
        if no_color:
            monkeypatch.setenv("NO_COLOR", no_color)
        fake = FakeTerminal()
        monkeypatch.setattr("sys.stderr", fake)
        assert terminal.live_display_allowed() is expect_bar
        with terminal.StderrProgress("export", 2, "files") as progress:
            progress.advance(2)
        assert (ANSI in fake.getvalue()) is expect_bar, fake.getvalue()
    monkeypatch.delenv("NO_COLOR")
    monkeypatch.setenv("TERM", "dumb")
    assert not terminal.live_display_allowed()


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mmpretrain.data.tokenizer import train_bpe

    root = tmp_path_factory.mktemp("terminal")
    corpus = make_corpus(root / "corpus.txt", documents=60)
    train_bpe(corpus.read_text(encoding="utf-8").split("\n\n"), vocab_size=300).save(root / "tokenizer")
    config = tiny_run_config(corpus, root / "tokenizer", train={"max_steps": 2, "save_every": 2})
    path = root / "run.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def test_training_with_no_color_on_a_terminal_writes_no_escapes_and_ends_with_a_result(
    tiny_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("TERM", "xterm-256color")
    fake = FakeTerminal()
    monkeypatch.setattr("sys.stderr", fake)
    run = tmp_path / "run"
    assert main(["train", str(tiny_config), "--run-dir", str(run)]) == 0
    out = capsys.readouterr().out
    assert ANSI not in out + fake.getvalue()
    lines = out.splitlines()
    assert [line.split("  ")[0] for line in lines if line.startswith("step ")] == ["step 1", "step 2"]
    assert lines[-1].startswith("trained steps 0..2 of 2: last loss ") and str(run) in lines[-1]

    # export: per-file progress on stderr, one result line on stdout
    plain = io.StringIO()  # stderr off a terminal
    monkeypatch.setattr("sys.stderr", plain)
    exported = tmp_path / "export"
    argv = ["export", str(run), "--to", "safetensors", "--out", str(exported), "--max-shard-size", "100KB"]
    assert main(argv) == 0
    out, err = capsys.readouterr().out, plain.getvalue()
    assert out.count("\n") == 1 and out.startswith("exported ") and str(exported) in out
    assert "writing weights: 1/2 files (model-00001-of-00002.safetensors" in err
    assert "writing weights: 2/2 files" in err


def test_quiet_training_prints_only_its_result_line(
    tiny_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert (
        main(["--quiet", "train", str(tiny_config), "--run-dir", str(run), "--set", "train.max_steps=1"]) == 0
    )
    out, err = capsys.readouterr()
    assert err == "" and out.count("\n") == 1 and out.startswith("trained steps 0..1 of 1: ")
    assert (run / "metrics.jsonl").read_text().count("\n") == 1  # the log is still written


def test_quiet_data_build_keeps_the_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "data",
        "build",
        "--format",
        "demo",
        "--out",
        str(tmp_path / "a"),
        "--samples",
        "4",
        "--shards",
        "1",
    ]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert out.startswith("built 4 demo samples") and "demo train: 4/4 samples" in err
    argv[argv.index(str(tmp_path / "a"))] = str(tmp_path / "b")
    assert main(["--quiet", *argv]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("built 4 demo samples") and f"index: {tmp_path / 'b' / 'index.json'}" in out
    assert err == ""
