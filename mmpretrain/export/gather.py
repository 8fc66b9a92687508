"""What an export reads: a run directory, a checkpoint directory or a saved model, as full
(unsharded) tensors in one process.

- A run directory (``config.yaml`` + ``checkpoints/``): its newest committed checkpoint.
- A checkpoint directory (``RUN/checkpoints/step_NNNNNNN`` with ``COMMITTED``): the run's
  config and tokenizer come from ``RUN``.
- A saved model (``model_config.yaml`` + weights, written by
  :meth:`~mmpretrain.model.multimodal.MultimodalLM.save_pretrained` or
  ``mmpt export --to safetensors``), with its tokenizer in ``DIR/tokenizer`` or ``DIR``.

Checkpoint tensors are read with ``torch.distributed.checkpoint`` and its
``HuggingFaceStorageReader`` without a process group, into tensors allocated at the full
sizes the checkpoint's metadata records: a checkpoint written by FSDP2 ranks (each holding
shards) is gathered here into whole tensors, whatever world size wrote it. Only the model's
tensors are read (no optimizer state). Nothing is unpickled.

The model is then built from the config (``sdpa`` attention, no activation checkpointing:
the weights and the maths are those of training) and the tensors are loaded with
``strict=True``; a missing, extra or misshapen tensor is an error naming it.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mmpretrain.data.tokenizer import TextTokenizer
from mmpretrain.errors import UserError
from mmpretrain.model.config import ModelConfig
from mmpretrain.model.multimodal import MultimodalLM

EXPORT_ATTENTION = "sdpa"
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
MODEL_PREFIX = "model."


@dataclass
class ExportSource:
    """A model to export and where it came from."""

    path: Path
    """What the user named (run, checkpoint or saved-model directory)."""
    kind: str
    """``run``, ``checkpoint`` or ``saved``."""
    model_config: ModelConfig
    run_config: Any = None
    """The run's RunConfig (None for a saved model)."""
    run_dir: Path | None = None
    checkpoint: Path | None = None
    """The checkpoint (or saved-model) directory the weights come from."""
    tokenizer: TextTokenizer | None = None
    state: dict[str, Any] = field(default_factory=dict)
    """The checkpoint's ``state.json`` (step, tokens, ...); empty for a saved model."""

    @property
    def step(self) -> int | None:
        return int(self.state["step"]) if "step" in self.state else None

    @property
    def tokens(self) -> int | None:
        return int(self.state["tokens"]) if "tokens" in self.state else None

    def describe(self) -> str:
        where = self.checkpoint or self.path
        step = f" (step {self.step})" if self.step is not None else ""
        return f"{where}{step}"


def export_model_config(cfg: ModelConfig) -> ModelConfig:
    """``cfg`` with the LLM on sdpa attention and activation checkpointing off (weights and
    numerics unchanged: ``mmpt_chunked`` and flash-attention only change how packed batches
    are computed)."""
    llm: Any = cfg.llm
    update: dict[str, Any] = {"activation_checkpointing": False}
    if getattr(llm, "attn_implementation", EXPORT_ATTENTION) != EXPORT_ATTENTION:
        update["llm"] = llm.model_copy(update={"attn_implementation": EXPORT_ATTENTION})
    return cfg.model_copy(update=update)


# ---------------------------------------------------------------------------- sources


def find_tokenizer(directories: list[Path], run_config: Any = None) -> TextTokenizer | None:
    """The first tokenizer found: a directory with ``tokenizer.json`` among ``directories``,
    else the run config's ``data.tokenizer.path``; None if there is none."""
    from mmpretrain.data.tokenizer import load_tokenizer

    for directory in directories:
        if (directory / "tokenizer.json").is_file():
            return load_tokenizer(directory)
    data = getattr(run_config, "data", None)
    path = getattr(getattr(data, "tokenizer", None), "path", None)
    if path is not None and Path(path).expanduser().is_dir():
        return load_tokenizer(path)
    return None


def _read_state(checkpoint: Path) -> dict[str, Any]:
    from mmpretrain.train.checkpoint import STATE_FILE

    try:
        state: dict[str, Any] = json.loads((checkpoint / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"checkpoint {checkpoint} is corrupt: cannot read {STATE_FILE} ({exc})") from exc
    return state


def _run_source(path: Path, run_dir: Path, checkpoint: Path, kind: str) -> ExportSource:
    from mmpretrain.config import load_config
    from mmpretrain.run_config import RunConfig

    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        raise UserError(f"{checkpoint} has no run config: expected {config_file}")
    cfg: RunConfig = load_config(config_file)
    tokenizer = find_tokenizer([run_dir / "tokenizer"], cfg)
    return ExportSource(
        path=path,
        kind=kind,
        model_config=cfg.model,
        run_config=cfg,
        run_dir=run_dir,
        checkpoint=checkpoint,
        tokenizer=tokenizer,
        state=_read_state(checkpoint),
    )


def resolve_source(path: str | Path) -> ExportSource:
    """What ``path`` holds: a run directory, a committed checkpoint or a saved model."""
    from mmpretrain.model.pretrained import CONFIG_FILE, has_weights
    from mmpretrain.recipes import final_stage_dir
    from mmpretrain.terminal import status
    from mmpretrain.train.checkpoint import COMMITTED, latest_checkpoint

    source = Path(path).expanduser()
    if not source.is_dir():
        raise UserError(
            f"{source} does not exist or is not a directory (give a run, checkpoint or saved-model directory)"
        )
    final_stage = final_stage_dir(source)
    if final_stage is not None:  # a recipe run: its last stage
        status(f"{source} is a recipe run: using its last stage, {final_stage.name}")
        source = final_stage
    if (source / CONFIG_FILE).is_file() and has_weights(source):
        return saved_model_source(source)
    if (source / COMMITTED).is_file():
        return _run_source(source, source.parent.parent, source, "checkpoint")
    if (source / "config.yaml").is_file():
        checkpoint = latest_checkpoint(source)
        if checkpoint is None:
            raise UserError(
                f"run directory {source} has no committed checkpoint yet "
                "(train longer or lower train.save_every)"
            )
        return _run_source(source, source, checkpoint, "run")
    if (
        (source / "latest").is_file()
        or any(source.glob("global_step*"))
        or any(source.glob("*model_states.pt"))
    ):
        raise UserError(
            f"{source} is a DeepSpeed checkpoint (pickle files): export reads mmpretrain checkpoints "
            "(step_NNNNNNN with safetensors); DeepSpeed runs are not supported yet"
        )
    if source.name.startswith(("step_", ".tmp-step_")):
        raise UserError(f"checkpoint {source} is not committed (partial write?): use an older one")
    raise UserError(
        f"{source} is not a run directory (config.yaml + checkpoints/), a checkpoint directory "
        f"(step_NNNNNNN with COMMITTED) or a saved model ({CONFIG_FILE} + model.safetensors)"
    )


def saved_model_source(directory: Path) -> ExportSource:
    """A saved MultimodalLM directory (``model_config.yaml`` + weights); its run config
    (``config.yaml``) and model card state (``export.json``) when present."""
    from mmpretrain.model.pretrained import read_model_config

    cfg = read_model_config(directory)
    run_config = None
    if (directory / "config.yaml").is_file():
        from mmpretrain.config import load_config
        from mmpretrain.run_config import RunConfig

        try:
            run_config = load_config(directory / "config.yaml", schema=RunConfig)
        except UserError:
            run_config = None  # provenance only: the model config is what loads
    state: dict[str, Any] = {}
    if (directory / "export.json").is_file():
        try:
            state = dict(
                json.loads((directory / "export.json").read_text(encoding="utf-8")).get("source", {})
            )
        except (OSError, ValueError):
            state = {}
    return ExportSource(
        path=directory,
        kind="saved",
        model_config=cfg,
        run_config=run_config,
        run_dir=None,
        checkpoint=directory,
        tokenizer=find_tokenizer([directory / "tokenizer", directory], run_config),
        state=state,
    )


# ---------------------------------------------------------------------------- tensors


def read_checkpoint_tensors(checkpoint: Path, prefix: str = MODEL_PREFIX) -> dict[str, torch.Tensor]:
    """The full tensors under ``prefix`` (prefix removed) of a DCP checkpoint written with
    ``HuggingFaceStorageWriter`` (by one process or by sharded ranks)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    from mmpretrain.train.checkpoint import TENSORS_DIR

    directory = checkpoint / TENSORS_DIR
    if not directory.is_dir() or not any(directory.glob("*.safetensors")):
        raise UserError(
            f"checkpoint {checkpoint} is corrupt or incomplete: {directory} holds no safetensors files"
        )
    index = directory / "model.safetensors.index.json"
    if index.is_file():  # written by a single process; sharded saves have per-rank files only
        try:
            weight_map: dict[str, str] = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError) as exc:
            raise UserError(f"checkpoint {checkpoint} is corrupt: cannot read {index.name} ({exc})") from exc
        for name, file in sorted(weight_map.items()):
            if name.startswith(prefix) and not (directory / file).is_file():
                raise UserError(
                    f"checkpoint {checkpoint} is incomplete: {directory / file} is missing "
                    f"(it holds tensor {name[len(prefix) :]!r})"
                )
    reader = HuggingFaceStorageReader(str(directory))
    try:
        metadata = reader.read_metadata()
    except Exception as exc:
        raise UserError(
            f"checkpoint {checkpoint} is corrupt: cannot read its tensor metadata ({exc})"
        ) from exc
    tensors: dict[str, torch.Tensor] = {}
    for name, meta in metadata.state_dict_metadata.items():
        if name.startswith(prefix) and isinstance(meta, TensorStorageMetadata):
            tensors[name] = torch.empty(tuple(meta.size), dtype=meta.properties.dtype)
    if not tensors:
        raise UserError(f"checkpoint {checkpoint} holds no model tensors (names starting with {prefix!r})")
    try:
        with warnings.catch_warnings():  # "torch.distributed is disabled ... single process": intended
            warnings.simplefilter("ignore", UserWarning)
            dcp.load(tensors, storage_reader=reader, no_dist=True)
    except Exception as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        reason = lines[-1] if lines else type(exc).__name__
        raise UserError(f"checkpoint {checkpoint} is corrupt or incomplete ({reason})") from exc
    return {name[len(prefix) :]: tensor for name, tensor in tensors.items()}


def _fit_vocabulary(cfg: ModelConfig, tensors: dict[str, torch.Tensor]) -> ModelConfig:
    """Early fusion: the LLM has as many token rows as the checkpoint (text + media codes)."""
    if not cfg.media_tokenizers:
        return cfg
    rows = next((t.shape[0] for n, t in tensors.items() if n.endswith("embed_tokens.weight")), None)
    llm: Any = cfg.llm
    if rows is None or getattr(llm, "pretrained", None) is not None or llm.vocab_size == rows:
        return cfg
    return cfg.model_copy(update={"llm": llm.model_copy(update={"vocab_size": int(rows)})})


def build_export_model(source: ExportSource) -> tuple[MultimodalLM, ModelConfig]:
    """Build ``source``'s model (export attention) and load its weights strictly, in eval
    mode; returns it and its model config (the source's, with an early-fusion vocabulary
    sized as the checkpoint's)."""
    from mmpretrain.model.build import build_model
    from mmpretrain.model.pretrained import load_state_strict, read_weights

    if source.kind == "saved":
        assert source.checkpoint is not None
        tensors = read_weights(source.checkpoint)
        where = str(source.checkpoint)
    else:
        assert source.checkpoint is not None
        tensors = read_checkpoint_tensors(source.checkpoint)
        where = f"checkpoint {source.checkpoint}"
    cfg = _fit_vocabulary(source.model_config, tensors)
    model = build_model(export_model_config(cfg))
    load_state_strict(model, tensors, where, source.checkpoint if source.kind == "saved" else None)
    model.eval()
    model.requires_grad_(False)
    return model, cfg


# ---------------------------------------------------------------------------- reporting


def parse_dtype(name: str | None) -> torch.dtype | None:
    """``float32`` / ``bfloat16`` / ``float16`` (None: keep the stored dtypes)."""
    if name is None:
        return None
    if name not in DTYPES:
        raise UserError(f"--dtype {name!r} is not one of {', '.join(DTYPES)}")
    return DTYPES[name]


def cast_floating(tensors: dict[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """Floating-point tensors in ``dtype`` (others, e.g. masks and counters, unchanged)."""
    if dtype is None:
        return tensors
    return {n: t.to(dtype) if t.is_floating_point() else t for n, t in tensors.items()}


def unique_tensors(tensors: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """The tensors once each (tied weights counted once)."""
    seen: set[tuple[int, int]] = set()
    out = []
    for tensor in tensors.values():
        key = (tensor.data_ptr(), tensor.numel())
        if key not in seen:
            seen.add(key)
            out.append(tensor)
    return out


def format_bytes(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError  # pragma: no cover


def size_summary(tensors: dict[str, torch.Tensor]) -> str:
    """``"1,234 parameters, float32, 4.9 KB"`` (tied tensors counted once)."""
    unique = unique_tensors(tensors)
    count = sum(t.numel() for t in unique if t.is_floating_point())
    size = sum(t.numel() * t.element_size() for t in unique)
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in unique if t.is_floating_point()})
    return f"{count:,} parameters, {'+'.join(dtypes) or 'no floats'}, {format_bytes(size)}"


def progress(message: str) -> None:
    """A progress line on stderr (stdout carries the result); none under --quiet."""
    from mmpretrain.terminal import status

    status(message)
