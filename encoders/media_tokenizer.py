"""Discrete media tokenizers: media -> code ids the LLM models like text (early fusion).

A media tokenizer maps one decoded media segment to a sequence of integer codes in
``[0, codebook_size)``. The data pipeline places them, shifted into the tokenizer's media
code range and framed by the modality's begin/end tokens, into the token stream, so they
are packed, masked and trained exactly like text (DESIGN.md section 3: "early fusion with
no connector, on the same packing path").

A trained media tokenizer is a directory: ``media_tokenizer.json`` (kind, modality,
codebook size and the kind's own config) plus ``model.safetensors`` (weights; never
pickle). :func:`load_media_tokenizer` reads any registered kind from such a directory.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from mmpretrain.data.decoders import DecodedSegment
from mmpretrain.errors import UserError

MANIFEST = "media_tokenizer.json"
WEIGHTS = "model.safetensors"


@runtime_checkable
class MediaTokenizer(Protocol):
    """What the pipeline needs from a discrete media tokenizer."""

    kind: str
    """Registered kind (``vq``, ``speech_units``)."""
    modality: str
    """``image`` or ``audio``."""
    codebook_size: int
    """Codes are in ``[0, codebook_size)``."""

    def encode(self, segment: DecodedSegment) -> list[int]:
        """The codes of one decoded media segment, in order."""
        ...

    def save(self, directory: Path) -> None:
        """Write ``media_tokenizer.json`` and ``model.safetensors`` into ``directory``."""
        ...


_LOADERS: dict[str, Callable[[Path, dict[str, Any]], MediaTokenizer]] = {}


def register_media_tokenizer_loader(
    kind: str,
) -> Callable[
    [Callable[[Path, dict[str, Any]], MediaTokenizer]], Callable[[Path, dict[str, Any]], MediaTokenizer]
]:
    """Decorator: ``load(directory, manifest) -> MediaTokenizer`` for directories of ``kind``."""

    def decorate(
        load: Callable[[Path, dict[str, Any]], MediaTokenizer],
    ) -> Callable[[Path, dict[str, Any]], MediaTokenizer]:
        _LOADERS[kind] = load
        return load

    return decorate


def write_manifest(
    directory: Path, kind: str, modality: str, codebook_size: int, config: dict[str, Any]
) -> None:
    """Write ``media_tokenizer.json`` (the common part of every kind's :meth:`save`)."""
    directory.mkdir(parents=True, exist_ok=True)
    manifest = {"kind": kind, "modality": modality, "codebook_size": codebook_size, "config": config}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def load_media_tokenizer(directory: str | Path) -> MediaTokenizer:
    """The media tokenizer saved in ``directory`` (one-line :class:`UserError` if it is not one)."""
    import mmpretrain.encoders  # noqa: F401  (importing registers the kinds' loaders)

    path = Path(directory)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise UserError(
            f"{path} is not a media tokenizer directory (no {MANIFEST}); train one with "
            "`mmpt tokenizer train --kind vq|speech_units`"
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{manifest_path} is not readable JSON: {exc}") from None
    kind = manifest.get("kind") if isinstance(manifest, dict) else None
    if kind not in _LOADERS:
        raise UserError(
            f"{manifest_path}: unknown media tokenizer kind {kind!r}; known: {', '.join(sorted(_LOADERS))}"
        )
    return _LOADERS[kind](path, manifest)
