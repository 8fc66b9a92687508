"""Shared helpers for the `mmpt data build` format tests (import as `build_helpers`): the
public-layout fixtures and generated media placed under the names they reference."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
from PIL import Image

from mmpretrain.data.build.options import BuildOptions
from mmpretrain.data.build.runner import build_dataset
from mmpretrain.data.decoders import DecodedSample, decode_sample
from mmpretrain.data.shard_stream import shard_outcomes

FIXTURES = Path(__file__).resolve().parents[3].parent / "shared" / "fixtures" / "formats"
"""../shared/fixtures/formats: miniature files in the exact layouts of public datasets."""


def write_image(path: Path, size: tuple[int, int] = (64, 48), seed: int = 0, fmt: str = "JPEG") -> bytes:
    """A random-noise RGB image (distinct per ``seed``) saved at ``path``; returns its bytes."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def write_audio(path: Path, seconds: float = 0.5, rate: int = 22050, seed: int = 0) -> None:
    """A noise clip (``rate`` Hz, mono) saved at ``path``; the extension picks WAV or FLAC."""
    rng = np.random.default_rng(seed)
    wave = (rng.standard_normal(int(seconds * rate)) * 0.1).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, wave, rate, format="FLAC" if path.suffix == ".flac" else "WAV")


def build(fmt: str, tmp_path: Path, **options: Any) -> dict[str, Any]:
    """Run a build into ``tmp_path/out`` (no progress bar); return index.json's content."""
    opts = BuildOptions(out=tmp_path / "out", **options)
    return build_dataset(fmt, opts, progress=False)


def read_back(out: Path) -> list[DecodedSample]:
    """Every sample of the shards in ``out``, decoded, in order (fails on any skip)."""
    samples = []
    for shard in sorted(out.glob("shard-*.tar")):
        for _, outcome in shard_outcomes(str(shard)):
            assert not hasattr(outcome, "reason"), f"unexpected skip in {shard}: {outcome}"
            samples.append(decode_sample(outcome))
    return samples


def shard_json(out: Path) -> list[dict[str, Any]]:
    """The raw ``KEY.json`` objects of every shard in ``out``, in order."""
    objs = []
    for shard in sorted(out.glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    data = tar.extractfile(member)
                    assert data is not None
                    objs.append(json.loads(data.read()))
    return objs
