"""``mmpt export CHECKPOINT --to safetensors``: the native format, for every model.

The directory holds what :meth:`MultimodalLM.from_pretrained` loads (``model_config.yaml``
and safetensors weights: one ``model.safetensors``, or shards with an index over
``--max-shard-size``), plus the run's ``config.yaml``, its tokenizer in ``tokenizer/``, a
model card ``README.md`` and ``export.json`` (source checkpoint, step, tokens, dtype); an
early-fusion run's ``media_vocab.json`` (its token-id layout) is copied too, while its
media tokenizers stay where ``model.media_tokenizers`` points.

Kernel-layer state (2:4 and unstructured masks, quantization scales, BitNet's transition
value) is saved with the weights as the state dict holds it, so the loaded model computes
what the trained one did. ``--dtype`` casts parameters only; kernel buffers keep their
dtype (a scale rounded to bf16 would change the kind's numerics).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from mmpretrain.config import dump_config
from mmpretrain.export.gather import ExportSource, format_bytes, size_summary
from mmpretrain.export.model_card import model_card
from mmpretrain.model.config import ModelConfig
from mmpretrain.model.multimodal import MultimodalLM
from mmpretrain.model.pretrained import CONFIG_FILE, save_state
from mmpretrain.terminal import StderrProgress

EXPORT_FILE = "export.json"
MEDIA_VOCAB = "media_vocab.json"
FORMAT_VERSION = 1


def native_state(model: MultimodalLM, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """The model's state dict with floating parameters in ``dtype`` (buffers unchanged)."""
    state = model.state_dict()
    if dtype is None:
        return state
    parameters = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    return {n: t.to(dtype) if n in parameters and t.is_floating_point() else t for n, t in state.items()}


class WeightsProgress:
    """Weights files written, on stderr (:class:`mmpretrain.terminal.StderrProgress`); the
    ``progress`` callback of :func:`~mmpretrain.model.pretrained.save_state`."""

    def __init__(self) -> None:
        self._bar: StderrProgress | None = None

    def __call__(self, done: int, total: int, path: Path | None) -> None:
        if self._bar is None:
            self._bar = StderrProgress("writing weights", total, "files")
        if path is not None:
            self._bar.advance(1, f"({path.name}, {format_bytes(path.stat().st_size)})")

    def __enter__(self) -> WeightsProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()


def export_native(
    source: ExportSource,
    model: MultimodalLM,
    cfg: ModelConfig,
    out: Path,
    dtype: torch.dtype | None,
    max_shard_size: int | str,
) -> dict[str, Any]:
    """Write the native export of ``model`` into ``out``; returns the ``export.json`` data."""
    from mmpretrain import __version__

    out.mkdir(parents=True, exist_ok=True)
    state = native_state(model, dtype)
    metadata = {"format": "pt", "mmpretrain": __version__}
    with WeightsProgress() as progress:
        files = save_state(state, out, max_shard_size, metadata, progress=progress)
    (out / CONFIG_FILE).write_text(dump_config(cfg), encoding="utf-8")
    if source.run_config is not None:
        (out / "config.yaml").write_text(dump_config(source.run_config), encoding="utf-8")
    if source.run_dir is not None and (source.run_dir / MEDIA_VOCAB).is_file():  # early fusion's id layout
        shutil.copyfile(source.run_dir / MEDIA_VOCAB, out / MEDIA_VOCAB)
    if source.tokenizer is not None:
        tokenizer_dir = out / "tokenizer"
        shutil.rmtree(tokenizer_dir, ignore_errors=True)
        source.tokenizer.save(tokenizer_dir)
    summary = size_summary(state)
    info = {
        "format_version": FORMAT_VERSION,
        "mmpretrain": __version__,
        "dtype": str(dtype).removeprefix("torch.") if dtype is not None else "as trained",
        "weights": [p.name for p in files],
        "size": summary,
        "source": {
            "path": str(source.path),
            "checkpoint": str(source.checkpoint) if source.checkpoint else None,
            "step": source.step,
            "tokens": source.tokens,
            "config_hash": source.state.get("config_hash"),
        },
    }
    (out / EXPORT_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    (out / "README.md").write_text(model_card(source, model, summary), encoding="utf-8")
    return info
