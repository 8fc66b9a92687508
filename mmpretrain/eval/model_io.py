"""Load a model and its tokenizer for evaluation.

``mmpt eval CHECKPOINT`` accepts:

- a run directory (``config.yaml`` + ``checkpoints/``): its newest committed checkpoint;
- a checkpoint directory ``RUN/checkpoints/step_NNNNNNN`` (committed): the run's config and
  tokenizer come from ``RUN``;
- a saved MultimodalLM (``model_config.yaml`` + ``model.safetensors`` or shards, written by
  :meth:`~mmpretrain.model.multimodal.MultimodalLM.save_pretrained` or ``mmpt export --to
  safetensors``) with its tokenizer in ``DIR/tokenizer/`` or in ``DIR`` itself;
- a transformers model directory (``config.json``: ``mmpt export --to hf`` output or any
  model :func:`mmpretrain.export.importer.import_hf_model` reads) with its tokenizer.

The tokenizer is the run's: ``data.tokenizer.path`` when the config names one, else the
BPE the run trained into ``RUN/tokenizer/`` (never retrained here). Evaluation runs the
LLM with ``sdpa`` attention whatever the run trained with (``mmpt_chunked`` and
flash-attention need packed-batch plans; the weights and the maths are the same).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmpretrain.data.tokenizer import BpeTokenizerConfig, TextTokenizer, load_tokenizer
from mmpretrain.errors import ConfigError, UserError
from mmpretrain.model.build import ModelMediaProcessor, build_model, media_processors
from mmpretrain.model.config import ModelConfig
from mmpretrain.model.multimodal import MultimodalLM

EVAL_ATTENTION = "sdpa"


@dataclass
class LoadedModel:
    """A model ready for evaluation and where it came from."""

    model: MultimodalLM
    tokenizer: TextTokenizer
    model_config: ModelConfig
    processors: dict[str, ModelMediaProcessor]
    checkpoint: str
    """The checkpoint (or saved-model) directory the weights came from."""
    config_hash: str
    """The run's config hash (from the checkpoint's state), else a hash of the model config."""
    step: int | None = None


def eval_model_config(cfg: ModelConfig) -> ModelConfig:
    """``cfg`` with the LLM on sdpa attention and activation checkpointing off (weights
    unchanged)."""
    llm: Any = cfg.llm
    update: dict[str, Any] = {"activation_checkpointing": False}
    if getattr(llm, "attn_implementation", EVAL_ATTENTION) != EVAL_ATTENTION:
        update["llm"] = llm.model_copy(update={"attn_implementation": EVAL_ATTENTION})
    return cfg.model_copy(update=update)


def model_config_hash(cfg: ModelConfig) -> str:
    """A short hash of a model config (for saved models that carry no run hash)."""
    import hashlib
    import json

    text = json.dumps(cfg.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _run_tokenizer(run_dir: Path, cfg: Any) -> TextTokenizer:
    """The tokenizer a run trained with, without training one."""
    from mmpretrain.registry import TOKENIZERS

    data = cfg.data
    if data is None:
        directory = run_dir / "tokenizer"
        if (directory / "tokenizer.json").is_file():
            return load_tokenizer(directory)
        raise UserError(f"{run_dir}/config.yaml has no data section and {directory} holds no tokenizer")
    tokenizer_cfg = data.tokenizer
    if isinstance(tokenizer_cfg, BpeTokenizerConfig) and tokenizer_cfg.path is None:
        directory = run_dir / "tokenizer"
        if not (directory / "tokenizer.json").is_file():
            raise UserError(
                f"{directory} holds no tokenizer.json: the run trains its tokenizer there at its start; "
                "was the run directory copied without it?"
            )
        return load_tokenizer(directory)
    tokenizer = TOKENIZERS.build(tokenizer_cfg)
    assert isinstance(tokenizer, TextTokenizer)
    return tokenizer


def _build(cfg: ModelConfig, tokenizer: TextTokenizer) -> MultimodalLM:
    model = build_model(eval_model_config(cfg))
    embeddings = model.llm.get_input_embeddings().num_embeddings  # type: ignore[operator]
    if embeddings < tokenizer.vocab_size:
        raise ConfigError(
            f"the model has {embeddings} embeddings but its tokenizer has {tokenizer.vocab_size} tokens: "
            "wrong tokenizer for this checkpoint"
        )
    return model


def _load_run_checkpoint(run_dir: Path, checkpoint: Path) -> LoadedModel:
    from mmpretrain.config import load_config
    from mmpretrain.run_config import RunConfig
    from mmpretrain.train.checkpoint import load_checkpoint, rng_state, set_rng_state
    from mmpretrain.train.run_dir import config_hash

    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        raise UserError(f"{checkpoint} has no run config: expected {config_file}")
    cfg: RunConfig = load_config(config_file)
    tokenizer = _run_tokenizer(run_dir, cfg)
    model = _build(cfg.model, tokenizer)
    saved_rng = rng_state()  # load_checkpoint restores the run's RNG; evaluation keeps the caller's
    try:
        state = load_checkpoint(checkpoint, model, None)
    finally:
        set_rng_state(saved_rng)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        model_config=cfg.model,
        processors=media_processors(cfg.model),
        checkpoint=str(checkpoint),
        config_hash=str(state.get("config_hash") or config_hash(cfg)),
        step=int(state["step"]) if "step" in state else None,
    )


def _export_source(directory: Path) -> dict[str, Any]:
    """The ``source`` record of a native export's ``export.json`` (empty if none)."""
    import json

    try:
        return dict(json.loads((directory / "export.json").read_text(encoding="utf-8")).get("source") or {})
    except (OSError, ValueError, AttributeError):
        return {}


def _load_saved_model(directory: Path) -> LoadedModel:
    """A ``save_pretrained`` / ``mmpt export --to safetensors`` directory (sharded or not)."""
    from mmpretrain.model.pretrained import CONFIG_FILE, load_state_strict, read_model_config, read_weights

    for candidate in (directory / "tokenizer", directory):
        if (candidate / "tokenizer.json").is_file():
            tokenizer = load_tokenizer(candidate)
            break
    else:
        raise UserError(
            f"{directory} is a saved model without a tokenizer: copy the run's tokenizer directory "
            f"to {directory / 'tokenizer'}"
        )
    cfg = read_model_config(directory)
    model = _build(cfg, tokenizer)
    load_state_strict(model, read_weights(directory), str(directory / CONFIG_FILE), directory)
    source = _export_source(directory)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        model_config=cfg,
        processors=media_processors(cfg),
        checkpoint=str(directory),
        config_hash=str(source.get("config_hash") or model_config_hash(cfg)),
        step=source.get("step"),
    )


def _load_transformers_dir(directory: Path) -> LoadedModel:
    """A transformers model directory (``mmpt export --to hf`` or any supported one)."""
    from mmpretrain.export.importer import import_hf_model

    imported = import_hf_model(directory)
    if imported.tokenizer is None:
        raise UserError(f"{directory} has no tokenizer.json: evaluation needs the model's tokenizer")
    model = imported.model
    if getattr(model.llm.config, "_attn_implementation", EVAL_ATTENTION) != EVAL_ATTENTION:
        model.llm.set_attn_implementation(EVAL_ATTENTION)  # type: ignore[operator]
    return LoadedModel(
        model=model,
        tokenizer=imported.tokenizer,
        model_config=imported.config,
        processors=media_processors(imported.config),
        checkpoint=str(directory),
        config_hash=model_config_hash(imported.config),
    )


def load_for_eval(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """The model (in eval mode, on ``device``) and tokenizer of a run directory, a
    checkpoint directory or a saved MultimodalLM directory."""
    from mmpretrain.model.pretrained import CONFIG_FILE, WEIGHTS_FILE, has_weights
    from mmpretrain.recipes import final_stage_dir
    from mmpretrain.terminal import status
    from mmpretrain.train.checkpoint import COMMITTED, latest_checkpoint

    source = Path(path).expanduser()
    if not source.is_dir():
        raise UserError(
            f"{source} does not exist or is not a directory (give a run, checkpoint or model directory)"
        )
    final_stage = final_stage_dir(source)
    if final_stage is not None:  # a recipe run: its last stage
        status(f"{source} is a recipe run: using its last stage, {final_stage.name}")
        source = final_stage
    if (source / CONFIG_FILE).is_file() and has_weights(source):
        loaded = _load_saved_model(source)
    elif (source / "config.json").is_file():
        loaded = _load_transformers_dir(source)
    elif (source / COMMITTED).is_file():
        loaded = _load_run_checkpoint(source.parent.parent, source)
    elif (source / "config.yaml").is_file():
        checkpoint = latest_checkpoint(source)
        if checkpoint is None:
            raise UserError(
                f"run directory {source} has no committed checkpoint yet (train longer or lower "
                "train.save_every)"
            )
        loaded = _load_run_checkpoint(source, checkpoint)
    elif source.name.startswith("step_") or source.name.startswith(".tmp-step_"):
        raise UserError(f"checkpoint {source} is not committed (partial write?): use an older one")
    else:
        raise UserError(
            f"{source} is not a run directory (config.yaml + checkpoints/), a checkpoint directory "
            f"(step_NNNNNNN with COMMITTED), a saved model ({CONFIG_FILE} + {WEIGHTS_FILE}) or a "
            "transformers model directory (config.json)"
        )
    loaded.model.to(device)
    loaded.model.eval()
    loaded.model.requires_grad_(False)
    return loaded
