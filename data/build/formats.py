"""The registry of `mmpt data build --format NAME` input formats.

A format is a parser: ``parse(options) -> Iterator[SourceRecord | RecordSkip]``. It reads
the dataset's own layout (cheaply, in the main process) and names the media each record
needs; :mod:`~mmpretrain.data.build.runner` reads and encodes the media in workers. Format
modules register themselves with :func:`register_format` when imported.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from mmpretrain.errors import UserError

from .options import BuildOptions
from .records import RecordSkip, SourceRecord

RecordStream = Iterator[SourceRecord | RecordSkip]
Parser = Callable[[BuildOptions], RecordStream]

FORMAT_MODULES: tuple[str, ...] = (
    "captions",
    "interleaved",
    "asr",
    "tts_interleaved",
    "text",
    "conversations",
)
"""Modules of this package that define formats (imported on first lookup)."""


@dataclass(frozen=True)
class BuildFormat:
    """A registered input format: its parser, a one-line summary and an example command."""

    name: str
    parse: Parser
    summary: str
    example: str


FORMATS: dict[str, BuildFormat] = {}


def register_format(name: str, summary: str, example: str) -> Callable[[Parser], Parser]:
    """Decorator registering ``parse`` as the parser of format ``name``."""

    def decorate(parse: Parser) -> Parser:
        if name in FORMATS and FORMATS[name].parse is not parse:
            raise ValueError(f"build format {name!r} is registered twice")
        FORMATS[name] = BuildFormat(name, parse, summary, example)
        return parse

    return decorate


def input_files(options: BuildOptions, suffixes: tuple[str, ...] | None = None) -> list[Path]:
    """The files ``--input`` names (a file, a directory: its files ending in ``suffixes``,
    or a glob), sorted; a one-line error if there are none."""
    from mmpretrain.data.text_sources import expand_paths

    return expand_paths([str(options.input)], suffixes)


def _load_all() -> None:
    for module in FORMAT_MODULES:
        importlib.import_module(f"{__package__}.{module}")


def available_formats() -> dict[str, BuildFormat]:
    """Every registered format by name (``demo`` is handled by the CLI itself)."""
    _load_all()
    return dict(sorted(FORMATS.items()))


def get_format(name: str) -> BuildFormat:
    """The format called ``name``; a one-line :class:`UserError` listing the formats if unknown."""
    formats = available_formats()
    if name not in formats:
        raise UserError(f"unknown --format {name!r}; formats: demo, {', '.join(formats)}")
    return formats[name]
