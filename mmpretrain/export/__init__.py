"""Export and import: checkpoints that transformers and the rest of the ecosystem load.

- ``export_checkpoint(path, "hf", out)``: a run / checkpoint / saved-model directory as a
  transformers model directory (``*ForCausalLM``, Llava, Idefics3 or Qwen2-Audio; see
  :mod:`mmpretrain.export.mapping`), built by loading our tensors into the transformers
  class with ``strict=True`` and ``save_pretrained``.
- ``export_checkpoint(path, "safetensors", out)``: the native format of every model
  (:mod:`mmpretrain.export.native`), loaded by ``MultimodalLM.from_pretrained``.
- :mod:`mmpretrain.export.importer`: transformers directories back into ``MultimodalLM``.

Heavy imports (transformers, torch.distributed.checkpoint) happen inside the functions.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmpretrain.errors import UserError

TARGETS = ("hf", "safetensors")


@dataclass
class ExportResult:
    """What an export wrote."""

    out: Path
    target: str
    """``safetensors`` or the transformers mapping (``causal_lm``, ``llava``, ...)."""
    model_class: str
    """The class that loads it (``MultimodalLM`` or the transformers class)."""
    summary: str
    """Parameters, dtype and size."""
    files: list[str]
    source: str

    def message(self) -> str:
        shards = [f for f in self.files if f.endswith(".safetensors")]
        return (
            f"exported {self.source} -> {self.out} as {self.model_class}: {self.summary} "
            f"in {len(shards)} safetensors file{'s' if len(shards) != 1 else ''}"
        )


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(
            f"--out {out} already exists and is not empty: choose another directory or pass --overwrite"
        )


def _prepare_out(out: Path, overwrite: bool) -> Path:
    """A fresh temporary directory beside ``out`` (renamed to ``out`` when complete)."""
    _check_out(out, overwrite)
    tmp = out.with_name(f".tmp-{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _finish(tmp: Path, out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def export_hf_model(
    model: Any, cfg: Any, tokenizer: Any, out: Path, dtype: Any, max_shard_size: Any
) -> tuple[str, Any]:
    """Export a built model to transformers into ``out``; returns (mapping, saved model).
    Kernel kinds are materialized first (after the mapping accepted them)."""
    from mmpretrain.export.mapping import CAUSAL_LM, IDEFICS3, LLAVA, plan_hf_export
    from mmpretrain.kernels import materialize_kernels

    target = plan_hf_export(cfg, model)
    materialize_kernels(model)
    if target == CAUSAL_LM:
        from mmpretrain.export.hf_text import export_causal_lm as export
    elif target == LLAVA:
        from mmpretrain.export.hf_llava import export_llava as export
    elif target == IDEFICS3:
        from mmpretrain.export.hf_idefics3 import export_idefics3 as export
    else:
        from mmpretrain.export.hf_qwen2_audio import export_qwen2_audio as export
    return target, export(model, tokenizer, out, dtype, max_shard_size)


def export_checkpoint(
    path: str | Path,
    to: str,
    out: str | Path,
    dtype: str | None = None,
    max_shard_size: str | int = "5GB",
    overwrite: bool = False,
) -> ExportResult:
    """Export the run / checkpoint / saved model at ``path`` to ``out`` (``to``: ``hf`` or
    ``safetensors``); floating weights in ``dtype`` (None: as trained)."""
    from mmpretrain.export.gather import (
        build_export_model,
        parse_dtype,
        progress,
        resolve_source,
        size_summary,
    )
    from mmpretrain.model.pretrained import parse_size

    if to not in TARGETS:
        raise UserError(f"--to {to!r} is not one of {', '.join(TARGETS)}")
    torch_dtype = parse_dtype(dtype)
    parse_size(max_shard_size)  # a bad size fails before any work
    target_dir = Path(out).expanduser()
    _check_out(target_dir, overwrite)
    source = resolve_source(path)
    model, cfg = build_export_model(source)
    if to == "hf":
        from mmpretrain.export.mapping import plan_hf_export

        plan_hf_export(cfg, model)  # an unmappable model fails before anything is written
    tmp = _prepare_out(target_dir, overwrite)
    try:
        progress(f"writing {to} export to {target_dir}")
        if to == "safetensors":
            from mmpretrain.export.native import export_native

            info = export_native(source, model, cfg, tmp, torch_dtype, max_shard_size)
            target, model_class, summary = "safetensors", "MultimodalLM", str(info["size"])
        else:
            target, hf = export_hf_model(model, cfg, source.tokenizer, tmp, torch_dtype, max_shard_size)
            model_class = type(hf).__name__
            summary = size_summary(hf.state_dict())
        files = sorted(p.name for p in tmp.iterdir())
        _finish(tmp, target_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportResult(target_dir, target, model_class, summary, files, source.describe())


__all__ = ["TARGETS", "ExportResult", "export_checkpoint", "export_hf_model"]
