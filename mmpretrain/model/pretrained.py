"""Save and load a whole MultimodalLM as a directory: its model config (YAML) and its
weights (safetensors; shared tensors such as tied embeddings stored once)."""

from __future__ import annotations

from pathlib import Path

import yaml

from mmpretrain.config import dump_config
from mmpretrain.errors import UserError
from mmpretrain.model.build import build_model
from mmpretrain.model.config import ModelConfig
from mmpretrain.model.multimodal import MultimodalLM

CONFIG_FILE = "model_config.yaml"
WEIGHTS_FILE = "model.safetensors"


def save_pretrained(model: MultimodalLM, config: ModelConfig, directory: str | Path) -> Path:
    """Write ``model_config.yaml`` and ``model.safetensors`` into ``directory``."""
    from safetensors.torch import save_model

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_FILE).write_text(dump_config(config), encoding="utf-8")
    save_model(model, str(out / WEIGHTS_FILE))
    return out


def from_pretrained(directory: str | Path) -> tuple[MultimodalLM, ModelConfig]:
    """Build the model of ``directory/model_config.yaml`` and load its weights (strict)."""
    from safetensors.torch import load_model

    source = Path(directory)
    if not (source / CONFIG_FILE).is_file() or not (source / WEIGHTS_FILE).is_file():
        raise UserError(f"{source} is not a saved MultimodalLM (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
    from mmpretrain.config import validate_config

    data = yaml.safe_load((source / CONFIG_FILE).read_text(encoding="utf-8"))
    config = validate_config(ModelConfig, data, str(source / CONFIG_FILE))
    model = build_model(config)
    try:
        load_model(model, str(source / WEIGHTS_FILE), strict=True)
    except (RuntimeError, OSError) as exc:
        first = " ".join(str(exc).split())[:300]
        raise UserError(f"{source / WEIGHTS_FILE} does not fit {source / CONFIG_FILE}: {first}") from exc
    return model, config
