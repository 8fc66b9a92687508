"""The `mmpt` CLI contract: every subcommand exists, helps, and fails honestly."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys

import pytest

from mmpretrain import cli
from mmpretrain.cli import build_parser, main

SUBCOMMANDS = [
    ["train"],
    ["data", "build"],
    ["data", "inspect"],
    ["data", "stats"],
    ["eval"],
    ["export"],
    ["list"],
    ["tokenizer", "train"],
    ["tokenizer", "decode"],
    ["plot"],
    ["config", "schema"],
    ["config", "show"],
    ["demo"],
]


@pytest.mark.parametrize("command", SUBCOMMANDS, ids=" ".join)
def test_every_subcommand_has_help_with_examples(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert f"usage: mmpt {' '.join(command)}" in out
    assert "examples:" in out


def test_plot_of_a_missing_run_dir_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plot", "runs/does-not-exist"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "runs/does-not-exist is not a directory" in err and err.count("\n") == 1


def test_top_level_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("train", "data", "eval", "export", "list", "tokenizer", "plot", "config", "demo"):
        assert f"    {name}" in out
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("mmpretrain ")


def test_no_command_and_bad_usage_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["frobnicate"]) == 2
    assert main(["list", "widgets"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_list_prints_every_registry_and_configs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for kind in ("llms", "encoders", "connectors", "tokenizers", "kernels", "recipes", "tasks", "configs"):
        assert f"{kind}: " in out
    assert "  llama " in out and "  text/tiny " in out
    assert main(["list", "llms"]) == 0
    only = capsys.readouterr().out
    assert "llama" in only and "configs:" not in only


def test_internal_error_exits_1_and_debug_shows_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(args: argparse.Namespace) -> int:
        raise RuntimeError("boom")

    monkeypatch.setattr(cli, "_cmd_list", broken)
    assert main(["list"]) == 1
    err = capsys.readouterr().err
    assert "internal error: RuntimeError: boom" in err and "Traceback" not in err
    assert main(["list", "--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_user_error_with_debug_shows_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show", "missing.yaml", "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().splitlines()[-1].startswith("error: config 'missing.yaml'")


def test_parser_lists_design_contract_options() -> None:
    parser = build_parser()
    train = parser.parse_args(["train", "tiny", "--run-dir", "d", "--set", "a=1", "--resume", "--nproc", "2"])
    assert (train.config, train.run_dir, train.set, train.resume, train.nproc) == (
        "tiny",
        "d",
        ["a=1"],
        True,
        2,
    )
    ev = parser.parse_args(
        ["eval", "ck", "--task", "t", "--shots", "0,4,8", "--limit", "5", "--out", "r.json"]
    )
    assert (ev.shots, ev.limit, ev.out) == ("0,4,8", 5, "r.json")


def test_console_script_is_installed() -> None:
    exe = shutil.which("mmpt", path=str(__import__("pathlib").Path(sys.executable).parent))
    assert exe is not None, "the `mmpt` console script is missing: reinstall with `make setup`"
    result = subprocess.run([exe, "list", "llms"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "qwen2" in result.stdout


def test_out_of_memory_is_one_line_with_what_to_change(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    import mmpretrain.cli as cli

    def run_out_of_memory(args: object) -> int:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(cli, "_cmd_list", run_out_of_memory)
    assert main(["list", "llms"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: out of memory: CUDA out of memory. Tried to allocate 2.00 GiB")
    assert "train.batch_size" in err and "continue with --resume" in err


def test_deepspeed_backend_without_deepspeed_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from mmpretrain.errors import UserError
    from mmpretrain.train.distributed import _init_deepspeed_comm

    monkeypatch.setitem(sys.modules, "deepspeed", None)  # import deepspeed -> ImportError
    with pytest.raises(UserError, match=r"DS_BUILD_OPS=0 pip install 'mmpretrain-lm\[deepspeed\]'"):
        _init_deepspeed_comm(cuda=False)
