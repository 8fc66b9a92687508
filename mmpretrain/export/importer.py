"""Import: transformers model directories back into ``MultimodalLM`` (the round trip of
``mmpt export --to hf``).

``import_hf_model(DIR)`` reads a local directory holding a ``*ForCausalLM`` (llama, qwen2,
qwen3, mistral, gemma), ``LlavaForConditionalGeneration`` (CLIP or SigLIP tower),
``Idefics3ForConditionalGeneration`` or ``Qwen2AudioForConditionalGeneration`` and returns
our model, its self-contained model config (random-init fields equal to the directory's
architecture: no ``pretrained`` path is kept) and the tokenizer:

1. the weight files are checked against the class's parameter names and shapes (from the
   config, on the meta device): a missing shard or a tensor of the wrong shape is an error
   naming the file and the tensor;
2. transformers loads the model (``from_pretrained``, local files only);
3. our config is derived from its config; the config of each part we build is compared
   with the directory's (any architecture setting ours cannot express is an error naming
   it), and each transformers module's state dict is loaded into ours with ``strict=True``
   (the same module pairs the export uses, in the other direction).

Building a part from a local transformers checkpoint needs no import: ``model.llm.pretrained``
and ``model.encoders.NAME.pretrained`` load LLMs and CLIP/SigLIP/Whisper/Qwen2-Audio towers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmpretrain.data.tokenizer import TextTokenizer
from mmpretrain.errors import UserError
from mmpretrain.model.config import ModelConfig
from mmpretrain.model.multimodal import MultimodalLM

CAUSAL_LM_TYPES = ("llama", "qwen2", "qwen3", "mistral", "gemma")
MULTIMODAL_TYPES = ("llava", "idefics3", "qwen2_audio")

# Config keys that do not change what the model computes at inference (or that we set).
NEUTRAL_KEYS = frozenset(
    {
        "transformers_version",
        "architectures",
        "_name_or_path",
        "dtype",
        "torch_dtype",
        "use_cache",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
        "output_hidden_states",
        "output_attentions",
        "return_dict",
        "id2label",
        "label2id",
        "problem_type",
        "chunk_size_feed_forward",
        "is_encoder_decoder",
        "initializer_range",
        "initializer_factor",
        "attention_dropout",
        "dropout",
        "activation_dropout",
        "encoder_layerdrop",
        "mmpt_attn_chunk",
        "tie_word_embeddings",
        "projection_dim",
        "vision_use_head",
        "_attn_implementation",
        "tie_last_hidden_states",
        "model_type",
    }
)


@dataclass
class ImportedModel:
    """A transformers directory as our model."""

    model: MultimodalLM
    config: ModelConfig
    tokenizer: TextTokenizer | None
    source: Path
    model_type: str

    def save_pretrained(self, directory: str | Path, max_shard_size: int | str = "5GB") -> Path:
        """The native format (``model_config.yaml``, weights, ``tokenizer/``)."""
        from mmpretrain.model.pretrained import save_pretrained

        out = save_pretrained(self.model, self.config, directory, max_shard_size)
        if self.tokenizer is not None:
            self.tokenizer.save(out / "tokenizer")
        return out


# ---------------------------------------------------------------------------- files


def _read_config(directory: Path) -> dict[str, Any]:
    file = directory / "config.json"
    if not file.is_file():
        raise UserError(f"{directory} is not a transformers model directory: {file} is missing")
    try:
        data: dict[str, Any] = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {file}: {exc}") from exc
    return data


def weight_files(directory: Path) -> dict[str, list[str]]:
    """Safetensors file -> the tensor names it should hold (from the index, else the file)."""
    from safetensors import SafetensorError, safe_open

    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map: dict[str, str] = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError) as exc:
            raise UserError(f"{index} is corrupt: {exc}") from exc
        files: dict[str, list[str]] = {}
        for name, file in weight_map.items():
            files.setdefault(file, []).append(name)
        return files
    single = directory / "model.safetensors"
    if not single.is_file():
        raise UserError(f"{directory} has no model.safetensors nor model.safetensors.index.json")
    try:
        with safe_open(str(single), framework="pt") as handle:
            return {single.name: list(handle.keys())}
    except (SafetensorError, OSError) as exc:
        raise UserError(f"cannot read {single}: {exc}") from exc


def check_weight_files(directory: Path, expected: dict[str, tuple[int, ...]]) -> None:
    """Every listed file exists and holds its tensors, each with the shape the config gives;
    errors name the file and the tensor. (Tensors missing from every file are left to
    transformers, which reports them.)"""
    from safetensors import SafetensorError, safe_open

    found: set[str] = set()
    for file, names in weight_files(directory).items():
        path = directory / file
        if not path.is_file():
            raise UserError(
                f"{path} is missing: the index lists it for {len(names)} tensors (first: {names[0]!r}); "
                "copy the whole directory"
            )
        try:
            with safe_open(str(path), framework="pt") as handle:
                present = set(handle.keys())
                for name in names:
                    if name not in present:
                        raise UserError(f"{path} lacks tensor {name!r}, which the index puts there")
                    if name in expected:
                        shape = tuple(handle.get_slice(name).get_shape())
                        if shape != expected[name]:
                            raise UserError(
                                f"{path}: tensor {name!r} has shape {list(shape)} but config.json gives "
                                f"{list(expected[name])}"
                            )
        except (SafetensorError, OSError) as exc:
            raise UserError(f"cannot read {path}: {exc}") from exc
        found.update(names)


def expected_shapes(model_class: Any, config: Any) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of ``model_class(config)`` (built on the meta device): the
    model's own names and the names ``save_pretrained`` writes (transformers 5 saves some
    classes, e.g. Llava, under their original checkpoint names)."""
    with torch.device("meta"):
        model = model_class._from_config(config)
    state = model.state_dict()
    shapes = {name: tuple(t.shape) for name, t in state.items()}
    try:
        from transformers.core_model_loading import revert_weight_conversion

        saved = revert_weight_conversion(model, dict(state))
    except Exception:  # another transformers version: the model's names only
        return shapes
    shapes.update({name: tuple(t.shape) for name, t in saved.items()})
    return shapes


# ---------------------------------------------------------------------------- configs


def config_differences(ours: Any, theirs: Any) -> list[str]:
    """Keys where two transformers configs differ in something that changes the maths."""
    a, b = ours.to_dict(), theirs.to_dict()
    diffs = []
    for key in sorted(set(a) & set(b)):
        if (
            key in NEUTRAL_KEYS
            or key.endswith("_config")
            or (isinstance(a[key], dict) and key != "rope_parameters")
        ):
            continue
        if a[key] != b[key]:
            diffs.append(f"{key}={b[key]!r} (ours would be {a[key]!r})")
    return diffs


def check_same(part: str, ours: Any, theirs: Any, directory: Path) -> None:
    diffs = config_differences(ours, theirs)
    if diffs:
        raise UserError(
            f"cannot import {directory}: its {part} sets {', '.join(diffs[:4])}, which model.{part} cannot "
            "express; load that part with `pretrained:` instead"
        )


def llm_fields(text: Any) -> dict[str, Any]:
    """Our LLM config (random-init fields) of a transformers text config."""
    if text.model_type not in CAUSAL_LM_TYPES:
        raise UserError(
            f"cannot import an LLM of type {text.model_type!r}: "
            f"mmpretrain builds {', '.join(CAUSAL_LM_TYPES)}"
        )
    rope = getattr(text, "rope_parameters", None) or {}
    fields: dict[str, Any] = {
        "name": text.model_type,
        "vocab_size": text.vocab_size,
        "hidden_size": text.hidden_size,
        "intermediate_size": text.intermediate_size,
        "num_layers": text.num_hidden_layers,
        "num_heads": text.num_attention_heads,
        "num_kv_heads": text.num_key_value_heads,
        "head_dim": getattr(text, "head_dim", None),
        "max_position_embeddings": text.max_position_embeddings,
        "rope_theta": float(rope.get("rope_theta", getattr(text, "rope_theta", 10000.0))),
        "tie_word_embeddings": bool(getattr(text, "tie_word_embeddings", False)),
        "rms_norm_eps": text.rms_norm_eps,
    }
    if text.model_type == "mistral":
        fields["sliding_window"] = getattr(text, "sliding_window", None)
    return fields


def vision_fields(vision: Any, feature_layer: int, select_strategy: str, final_norm: bool) -> dict[str, Any]:
    """Our hf_clip / hf_siglip config of a transformers vision config."""
    kind = vision.model_type
    if kind in ("clip_vision_model", "clip"):
        name = "hf_clip"
    elif kind in ("siglip_vision_model", "siglip", "idefics3_vision"):
        name = "hf_siglip"
    else:
        raise UserError(f"cannot import a vision tower of type {kind!r} (mmpretrain: CLIP, SigLIP)")
    return {
        "name": name,
        "hidden_size": vision.hidden_size,
        "intermediate_size": vision.intermediate_size,
        "num_layers": vision.num_hidden_layers,
        "num_heads": vision.num_attention_heads,
        "patch_size": vision.patch_size,
        "image_size": vision.image_size,
        "feature_layer": feature_layer,
        "select_strategy": select_strategy,
        "final_norm": final_norm,
    }


RESIZE_NAMES = {2: "bilinear", 3: "bicubic"}


def transform_fields(directory: Path) -> dict[str, Any]:
    """Our image transform from the directory's image processor (if any)."""
    from transformers import AutoImageProcessor

    try:
        processor = AutoImageProcessor.from_pretrained(str(directory), backend="pil")
    except (OSError, ValueError):
        return {}
    fields: dict[str, Any] = {}
    mean, std = getattr(processor, "image_mean", None), getattr(processor, "image_std", None)
    if isinstance(mean, (list, tuple)) and isinstance(std, (list, tuple)) and len(mean) == len(std) == 3:
        fields["mean"], fields["std"] = [float(m) for m in mean], [float(s) for s in std]
    resample = getattr(processor, "resample", None)
    if resample is not None and int(resample) in RESIZE_NAMES:
        fields["interpolation"] = RESIZE_NAMES[int(resample)]
    size = getattr(processor, "size", None) or {}
    if getattr(processor, "do_pad", False) and getattr(processor, "do_center_crop", False):
        fields["resize"] = "pad"
    elif getattr(processor, "do_center_crop", False) and "shortest_edge" in size:
        fields["resize"] = "center_crop"
    elif "height" in size or "longest_edge" in size:
        fields["resize"] = "stretch"
    return fields


def audio_fields(audio: Any, directory: Path) -> dict[str, Any]:
    """Our hf_qwen2_audio config of a Qwen2AudioEncoderConfig (+ the feature extractor's rate)."""
    rate = 16000
    file = directory / "processor_config.json"
    if file.is_file():
        try:
            extractor = json.loads(file.read_text(encoding="utf-8")).get("feature_extractor", {})
            rate = int(extractor.get("sampling_rate", rate))
        except (OSError, ValueError):
            pass
    return {
        "name": "hf_qwen2_audio",
        "n_mels": audio.num_mel_bins,
        "max_source_positions": audio.max_source_positions,
        "hidden_size": audio.d_model,
        "num_layers": audio.encoder_layers,
        "num_heads": audio.encoder_attention_heads,
        "intermediate_size": audio.encoder_ffn_dim,
        "sampling_rate": rate,
    }


# ---------------------------------------------------------------------------- modules


def load_into(ours: nn.Module, theirs: nn.Module, label: str, allow_extra: tuple[str, ...] = ()) -> None:
    """``ours.load_state_dict(theirs.state_dict(), strict=True)`` (unused transformers
    tensors under ``allow_extra`` prefixes, e.g. SigLIP's pooling head, are left out)."""
    state = {k: v for k, v in theirs.state_dict().items() if not k.startswith(allow_extra)}
    try:
        ours.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = " ".join(str(exc).split())[:400]
        raise UserError(f"cannot import the {label}: {first}") from exc


def _llm_pairs(model: MultimodalLM, hf: Any) -> None:
    llm: Any = model.llm
    load_into(llm.get_decoder(), hf.get_decoder(), "LLM decoder")
    load_into(llm.get_output_embeddings(), hf.get_output_embeddings(), "LM head")


def _tokenizer(directory: Path) -> TextTokenizer | None:
    from mmpretrain.data.tokenizer import load_tokenizer

    if not (directory / "tokenizer.json").is_file():
        return None
    return load_tokenizer(directory)


def _check_token(tokenizer: TextTokenizer | None, role: str, token_id: int, directory: Path) -> None:
    if tokenizer is not None and getattr(tokenizer, f"{role}_id") != token_id:
        raise UserError(
            f"cannot import {directory}: config.json's {role} token id is {token_id} but the tokenizer's "
            f"<{role}> is {getattr(tokenizer, f'{role}_id')}; "
            f"mmpretrain places media at its tokenizer's <{role}>"
        )


def import_hf_model(directory: str | Path) -> ImportedModel:
    """Our model, config and tokenizer of a local transformers model directory."""
    import transformers

    from mmpretrain.config import validate_config
    from mmpretrain.model.build import build_model

    source = Path(directory).expanduser()
    model_type = _read_config(source).get("model_type")
    if model_type not in (*CAUSAL_LM_TYPES, *MULTIMODAL_TYPES):
        raise UserError(
            f"cannot import {source}: model_type {model_type!r}; mmpretrain imports "
            f"{', '.join(CAUSAL_LM_TYPES + MULTIMODAL_TYPES)}"
        )
    hf_config = transformers.AutoConfig.from_pretrained(str(source))
    if model_type in CAUSAL_LM_TYPES:
        model_class: Any = transformers.AutoModelForCausalLM._model_mapping[type(hf_config)]
    else:
        model_class = {
            "llava": transformers.LlavaForConditionalGeneration,
            "idefics3": transformers.Idefics3ForConditionalGeneration,
            "qwen2_audio": transformers.Qwen2AudioForConditionalGeneration,
        }[model_type]
    check_weight_files(source, expected_shapes(model_class, hf_config))
    try:
        hf = model_class.from_pretrained(str(source), dtype=torch.float32, local_files_only=True).eval()
    except (OSError, ValueError, RuntimeError) as exc:
        reason = " ".join(str(exc).split())[:300]
        raise UserError(f"transformers cannot load {source}: {reason}") from exc
    tokenizer = _tokenizer(source)
    text = hf_config if model_type in CAUSAL_LM_TYPES else hf_config.text_config
    data: dict[str, Any] = {"llm": llm_fields(text)}
    extra: tuple[str, ...] = ()
    if model_type == "llava":
        _check_token(tokenizer, "image", hf_config.image_token_id, source)
        strategy = hf_config.vision_feature_select_strategy
        layer = hf_config.vision_feature_layer
        if not isinstance(layer, int):
            raise UserError(
                f"cannot import {source}: vision_feature_layer {layer} (several layers) is not supported"
            )
        vision = {
            **vision_fields(hf_config.vision_config, layer, strategy, False),
            **transform_fields(source),
        }
        if vision["name"] == "hf_siglip" and strategy == "default":
            raise UserError(
                f"cannot import {source}: Llava with a SigLIP tower and vision_feature_select_strategy "
                "'default' drops a patch token, which hf_siglip does not (it keeps every patch)"
            )
        data["encoders"] = {"vision": vision}
        data["connectors"] = {"image": {"name": "mlp", "bias": bool(hf_config.multimodal_projector_bias)}}
        extra = ("head.",)
    elif model_type == "idefics3":
        _check_token(tokenizer, "image", hf_config.image_token_id, source)
        vision = {**vision_fields(hf_config.vision_config, -1, "full", True), **transform_fields(source)}
        vision["resize"] = "stretch"
        data["encoders"] = {"vision": vision}
        data["connectors"] = {"image": {"name": "pixel_shuffle_mlp", "scale_factor": hf_config.scale_factor}}
    elif model_type == "qwen2_audio":
        _check_token(tokenizer, "audio", hf_config.audio_token_id, source)
        data["encoders"] = {"speech": audio_fields(hf_config.audio_config, source)}
        data["connectors"] = {"audio": {"name": "linear", "bias": True}}
    cfg = validate_config(ModelConfig, data, f"{source}/config.json (imported)")
    model = build_model(cfg).eval()
    check_same("llm", model.llm.config, text, source)
    if model_type in CAUSAL_LM_TYPES:
        _llm_pairs(model, hf)
    elif model_type == "llava":
        encoder: Any = model.encoders["vision"]
        check_same("encoders.vision", encoder.vision_tower.config, hf_config.vision_config, source)
        load_into(encoder.vision_tower, hf.model.vision_tower, "vision tower", extra)
        load_into(model.connectors["image"], hf.model.multi_modal_projector, "mlp connector")
        _llm_pairs(model, hf)
    elif model_type == "idefics3":
        encoder = model.encoders["vision"]
        check_same("encoders.vision", encoder.vision_tower.config, hf_config.vision_config, source)
        load_into(encoder.vision_tower, hf.model.vision_model, "vision tower")
        load_into(model.connectors["image"], hf.model.connector, "pixel-shuffle connector")
        _llm_pairs(model, hf)
    else:
        encoder = model.encoders["speech"]
        check_same("encoders.speech", encoder.audio_tower.config, hf_config.audio_config, source)
        load_into(encoder.audio_tower, hf.model.audio_tower, "audio tower")
        load_into(model.connectors["audio"], hf.model.multi_modal_projector, "linear connector")
        _llm_pairs(model, hf)
    cfg = _fit_tokenizer(model, cfg, tokenizer)
    model.requires_grad_(False)
    return ImportedModel(model, cfg, tokenizer, source, str(model_type))


def _fit_tokenizer(model: MultimodalLM, cfg: ModelConfig, tokenizer: TextTokenizer | None) -> ModelConfig:
    """A tokenizer that gained our special tokens on loading (a foreign checkpoint) gets
    embedding rows for them, initialised at the mean of the others."""
    import logging

    llm: Any = model.llm
    rows = llm.get_input_embeddings().num_embeddings
    if tokenizer is None or tokenizer.vocab_size <= rows:
        return cfg
    logging.getLogger(__name__).warning(
        "the tokenizer has %d tokens (our special tokens added) but the model %d embedding rows: "
        "resizing, new rows at the mean of the others",
        tokenizer.vocab_size,
        rows,
    )
    llm.resize_token_embeddings(tokenizer.vocab_size, mean_resizing=True)
    llm_cfg: Any = cfg.llm
    return cfg.model_copy(update={"llm": llm_cfg.model_copy(update={"vocab_size": tokenizer.vocab_size})})
