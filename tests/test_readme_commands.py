"""The cheap `mmpt` commands shown in README.md run and exit 0.

Commands are read from the README's fenced shell blocks (```bash, ```sh, ```console, or an
untagged fence); only read-only introspection commands run (`mmpt list`, `mmpt config
schema|show|validate`, `--help`, `--version`), in-process through :func:`mmpretrain.cli.main`.
Everything else (training, data builds, evaluation, export) is skipped: other tests cover it.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import NamedTuple

import pytest

from mmpretrain.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"
SHELL_FENCES = {"", "bash", "sh", "shell", "console"}
# README is rewritten from time to time: fewer commands than this means the extraction broke.
MIN_COMMANDS = 5


def _shell_blocks(text: str) -> list[list[str]]:
    """The lines of every fenced block whose info string names a shell (or nothing)."""
    blocks: list[list[str]] = []
    current: list[str] | None = None  # the open block's lines; None outside a block
    keep = False  # whether the open block is a shell block
    for line in text.splitlines():
        fence = re.match(r"^\s*(?:`{3,}|~{3,})\s*([\w+-]*)", line)
        if fence and current is None:
            current, keep = [], fence.group(1).lower() in SHELL_FENCES
        elif fence and current is not None:
            if keep:
                blocks.append(current)
            current = None
        elif current is not None:
            current.append(line)
    return blocks


def _strip_comment(line: str) -> str:
    """``line`` without a trailing ``# comment`` (a ``#`` outside quotes after a space)."""
    quote = ""
    for i, char in enumerate(line):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


class ReadmeCommand(NamedTuple):
    """One command line of the README and, in a ```console block, the error line it shows."""

    command: str
    error: str | None  # "error: ..." printed under the command (it then exits 2), else None


def readme_commands(text: str) -> list[ReadmeCommand]:
    """Every complete `mmpt` command line in the shell blocks of ``text``, in order."""
    commands: dict[str, ReadmeCommand] = {}
    for block in _shell_blocks(text):
        for i, raw in enumerate(block):
            line = raw.strip()
            prompt = line.startswith("$ ")
            line = line[2:] if prompt else line
            if not (line.startswith("mmpt ") or line.startswith(".venv/bin/mmpt ")):
                continue
            line = _strip_comment(line)
            if line.endswith("\\") or "..." in line or re.search(r"<[^>]*>", line):
                continue  # continued on the next line, or a placeholder
            if re.search(r"[|><;&`]|\$\(", line):
                continue  # pipes, redirects, several commands
            error = None
            for shown in block[i + 1 :] if prompt else []:  # the output shown under a prompt
                if shown.startswith("$ "):
                    break
                if shown.startswith("error: "):
                    error = shown.strip()
            command = line.removeprefix(".venv/bin/")
            commands.setdefault(command, ReadmeCommand(command, error))
    return list(commands.values())


def is_cheap(argv: list[str]) -> bool:
    """Read-only introspection: listing registries, the config schema, help and version."""
    words = [word for word in argv if not word.startswith("-")]
    if "--help" in argv or "-h" in argv or argv == ["--version"]:
        return True
    if words[:1] == ["list"]:
        return True
    return words[:2] in (["config", "schema"], ["config", "show"], ["config", "validate"])


ALL_COMMANDS = readme_commands(README.read_text(encoding="utf-8"))
CHEAP = {cmd.command: cmd for cmd in ALL_COMMANDS if is_cheap(shlex.split(cmd.command)[1:])}
CHEAP_COMMANDS = list(CHEAP)


def test_extraction_finds_the_readme_commands() -> None:
    assert len(CHEAP_COMMANDS) >= MIN_COMMANDS, (
        f"README.md shows {len(CHEAP_COMMANDS)} cheap mmpt commands in shell blocks "
        f"(expected at least {MIN_COMMANDS}): {CHEAP_COMMANDS}; did the README's format change?"
    )


@pytest.mark.parametrize("command", CHEAP_COMMANDS)
def test_readme_command_runs_as_shown(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Exit 0, or where the README shows an `error:` line under the command, exit 2 with
    that line (its ``...`` parts stand for paths that differ from machine to machine)."""
    code = main(shlex.split(command)[1:])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, f"`{command}` printed a traceback:\n{err[-2000:]}"
    shown = CHEAP[command].error
    if shown is None:
        assert code == 0, f"`{command}` exited {code}:\n{err[-2000:]}"
        return
    assert code == 2, f"`{command}` exited {code}; README.md shows it failing with: {shown}"
    for part in shown.split("..."):
        assert part.strip() in err, f"`{command}`: README.md shows {shown!r}, the command printed {err!r}"


def test_extraction_rules() -> None:
    text = "\n".join(
        [
            "```bash",
            "mmpt list encoders            # comment",
            ".venv/bin/mmpt config schema model",
            "mmpt train tiny --set 'a=#b'",
            "mmpt eval <checkpoint> --task x",
            "mmpt list ... ",
            "mmpt list | head",
            "mmpt train a \\",
            "```",
            "```yaml",
            "mmpt list llms",
            "```",
            "```console",
            "$ mmpt --version",
            "mmpretrain 0.1.0",
            "$ mmpt config show x.yaml",
            "error: config file not found: x.yaml",
            "```",
        ]
    )
    assert readme_commands(text) == [
        ReadmeCommand("mmpt list encoders", None),
        ReadmeCommand("mmpt config schema model", None),
        ReadmeCommand("mmpt train tiny --set 'a=#b'", None),
        ReadmeCommand("mmpt --version", None),
        ReadmeCommand("mmpt config show x.yaml", "error: config file not found: x.yaml"),
    ]
    assert is_cheap(["config", "show", "tiny"]) and is_cheap(["train", "--help"])
    assert not is_cheap(["train", "tiny"]) and not is_cheap(["data", "build", "--format", "demo"])


def readme_config_blocks(text: str) -> dict[str, str]:
    """The README's YAML blocks that start with a file-name comment (``# my_vlm.yaml``)."""
    blocks = re.findall(r"```yaml\n# ([\w.-]+\.yaml)\b[^\n]*\n(.*?)```", text, flags=re.DOTALL)
    return {name: body for name, body in blocks}


def test_quick_start_config_validates_as_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    configs = readme_config_blocks(README.read_text(encoding="utf-8"))
    assert "my_vlm.yaml" in configs
    path = tmp_path / "my_vlm.yaml"
    path.write_text(configs["my_vlm.yaml"], encoding="utf-8")
    assert main(["config", "show", str(path)]) == 0
    assert main(["config", "show", str(path), "--stage", "full"]) == 0
    out = capsys.readouterr().out
    assert "pretrained: /models/siglip-base-patch16-224" in out
    assert "trainable:\n    encoders: false" in out  # the full stage's run config
