"""Precomputed media codes for early fusion: ``mmpt data build --tokenize-media DIR``.

Each media segment of a modality that has a media tokenizer gets
``meta["codes"] = {"tokenizer": "KIND:SHA256", "codes": [...]}``; training reuses them
when its configured tokenizer has the same fingerprint (and encodes on the fly
otherwise), so the tokenizer's forward pass is paid once per build instead of once per
epoch. Builds call :func:`codes_meta` in their worker processes (each loads a tokenizer
once and keeps it); the demo dataset is drawn in one pass and annotated afterwards by
:func:`add_codes_to_dataset`.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmpretrain.data.decoders import DecodedSegment, decode_audio, decode_image
from mmpretrain.data.media_vocab import STORED_CODES_KEY, tokenizer_fingerprint
from mmpretrain.data.shard_io import ShardWriter, iter_shard_samples
from mmpretrain.data.skips import SkipCounter
from mmpretrain.data.types import Segment
from mmpretrain.errors import UserError

if TYPE_CHECKING:
    from mmpretrain.encoders.media_tokenizer import MediaTokenizer

_LOADED: dict[str, tuple[MediaTokenizer, str]] = {}
"""Media tokenizers loaded in this process, by directory (each worker loads its own once)."""


def _tokenizer(directory: str) -> tuple[MediaTokenizer, str]:
    """The tokenizer in ``directory`` and its fingerprint, loaded once per process."""
    if directory not in _LOADED:
        import torch

        from mmpretrain.encoders.media_tokenizer import load_media_tokenizer

        if multiprocessing.parent_process() is not None:
            torch.set_num_threads(1)  # build workers already use every core between them
        with torch.random.fork_rng(devices=[]):
            tokenizer = load_media_tokenizer(directory)
        _LOADED[directory] = (tokenizer, tokenizer_fingerprint(directory))
    return _LOADED[directory]


def media_tokenizer_dirs(directories: Sequence[str]) -> dict[str, str]:
    """``--tokenize-media`` values checked: each a media tokenizer directory, at most one
    per modality; returns modality -> directory."""
    chosen: dict[str, str] = {}
    for directory in directories:
        tokenizer, _ = _tokenizer(str(directory))
        if tokenizer.modality in chosen:
            raise UserError(
                f"--tokenize-media: {chosen[tokenizer.modality]} and {directory} both tokenize "
                f"{tokenizer.modality}; give one tokenizer per modality"
            )
        chosen[tokenizer.modality] = str(directory)
    return chosen


def codes_meta(kind: str, data: bytes, directories: Mapping[str, str]) -> dict[str, Any] | None:
    """``meta["codes"]`` of a media file's bytes (None when no tokenizer takes ``kind``)."""
    directory = directories.get(kind)
    if directory is None:
        return None
    tokenizer, fingerprint = _tokenizer(directory)
    if kind == "image":
        segment = DecodedSegment("image", image=decode_image(data))
    else:
        wave, rate = decode_audio(data)
        segment = DecodedSegment("audio", audio=wave, sample_rate=rate)
    return {"tokenizer": fingerprint, "codes": [int(c) for c in tokenizer.encode(segment)]}


def _with_codes(segment: Segment, directories: Mapping[str, str], counts: Counter[str]) -> Segment:
    if not segment.is_media or segment.data is None:
        return segment
    stored = codes_meta(segment.kind, segment.data, directories)
    if stored is None:
        return segment
    counts[segment.kind] += 1
    segment.meta = {**segment.meta, STORED_CODES_KEY: stored}
    return segment


def _rewrite_shard(path: Path, directories: Mapping[str, str], counts: Counter[str]) -> int:
    """Rewrite one shard with codes in its media segments' meta; returns its new size."""
    tmp = path.parent / f".codes-{path.stem}"
    shutil.rmtree(tmp, ignore_errors=True)
    skips = SkipCounter(max_skips=0, name=str(path))  # our own fresh shard: any problem is a bug
    with ShardWriter(tmp, prefix="shard", max_samples=1 << 62, max_bytes=1 << 62) as writer:
        for sample in iter_shard_samples(path, skips):
            sample.segments = [_with_codes(s, directories, counts) for s in sample.segments]
            writer.write(sample)
    os.replace(writer.shards[0], path)
    shutil.rmtree(tmp, ignore_errors=True)
    return path.stat().st_size


def add_codes_to_dataset(out: Path, directories: Mapping[str, str]) -> dict[str, Any]:
    """Add codes to every shard listed in ``out/index.json`` (and its ``heldout/`` split),
    updating the shard sizes and recording the tokenizers there; returns that record."""
    counts: Counter[str] = Counter()
    record: dict[str, Any] = {
        "tokenizers": {
            m: {"path": d, "fingerprint": _tokenizer(d)[1]} for m, d in sorted(directories.items())
        },
    }
    for index_path in [out / "index.json", out / "heldout" / "index.json"]:
        if not index_path.is_file():
            continue
        index = json.loads(index_path.read_text(encoding="utf-8"))
        for entry in index["shards"]:
            entry["bytes"] = _rewrite_shard(index_path.parent / entry["path"], directories, counts)
        index["bytes"] = sum(entry["bytes"] for entry in index["shards"])
        index["media_codes"] = record
        index_path.write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    record["segments"] = dict(sorted(counts.items()))
    return record
