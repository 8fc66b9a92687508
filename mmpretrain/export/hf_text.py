"""Export to transformers: the shared steps, and text-only models as ``*ForCausalLM``.

Every transformers export is built the same way (never by writing key names by hand:
transformers 5 renamed several, e.g. Llava's ``model.language_model.*``):

1. a transformers config mapped from ours (the LLM's own config, the towers' configs);
2. the transformers class instantiated from it (weight init skipped);
3. our modules paired with its modules (:class:`ModulePair`, e.g. our LLM decoder with
   ``model.get_decoder()``); the pairs' state dicts, prefixed by where the transformers
   module sits in its model, are loaded with ``load_state_dict(strict=True)``, so a
   missing, extra or misshapen tensor fails the export;
4. ``save_pretrained`` (safetensors, sharded over ``max_shard_size`` with an index), the
   tokenizer with a chat template, and a generation config (our EOS, pad; no BOS:
   packed training separates documents with EOS alone).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmpretrain.data.tokenizer import SPECIAL_TOKENS, TextTokenizer
from mmpretrain.errors import UserError
from mmpretrain.model.multimodal import MultimodalLM

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- message['role'] | capitalize }}: "
    "{%- if message['content'] is string -%}"
    "{{- ' ' + message['content'] -}}"
    "{%- else -%}"
    "{{- ' ' -}}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{- 'IMAGE_TOKENS' -}}"
    "{%- elif item['type'] == 'audio' -%}{{- 'AUDIO_TOKENS' -}}"
    "{%- elif item['type'] == 'text' -%}{{- item['text'] -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'Assistant: ' -}}{%- endif -%}"
)
CHAT_TEMPLATE = CHAT_TEMPLATE.replace(
    "IMAGE_TOKENS", SPECIAL_TOKENS.image_start + SPECIAL_TOKENS.image + SPECIAL_TOKENS.image_end
).replace("AUDIO_TOKENS", SPECIAL_TOKENS.audio_start + SPECIAL_TOKENS.audio + SPECIAL_TOKENS.audio_end)
"""The conversation template of ``mmpt data build --format conversations`` (``User: ...``,
``Assistant: ...``, one turn per line), with each image as ``<image_start><image><image_end>``
and each audio clip as ``<audio_start><audio><audio_end>``: the processors repeat the
``<image>`` / ``<audio>`` placeholder to the item's token count, and the begin/end markers
stay literal text, which reproduces our ``<begin> + N x <placeholder> + <end>`` layout."""

IGNORED_CONFIG_KEYS = ("mmpt_attn_chunk",)


@dataclass(frozen=True)
class ModulePair:
    """Our module and the transformers module that takes its state dict unchanged."""

    ours: nn.Module
    theirs: nn.Module
    label: str
    """What it is, for errors (``LLM decoder``, ``vision tower``, ...)."""


@contextlib.contextmanager
def skip_weight_init() -> Iterator[None]:
    """Instantiate transformers models without random init (every weight is loaded after)."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # older transformers: initialise (slower, same result)
        yield
        return
    with no_init_weights():
        yield


def text_config(llm: nn.Module, tokenizer: TextTokenizer | None) -> Any:
    """A copy of the LLM's transformers config for inference: sdpa attention, the KV
    cache on, our EOS/pad ids and no BOS, without our private keys."""
    config: Any = llm.config
    data = {k: v for k, v in config.to_dict().items() if k not in IGNORED_CONFIG_KEYS}
    data["use_cache"] = True
    data["architectures"] = None
    data.pop("_attn_implementation", None)
    if tokenizer is not None:
        data.update(bos_token_id=None, eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id)
    new = type(config).from_dict(data)
    new._attn_implementation = "sdpa"
    return new


def instantiate(model_class: Any, config: Any) -> Any:
    """``model_class(config)`` in float32 without weight init, in eval mode."""
    config = copy.deepcopy(config)
    build = getattr(model_class, "_from_config", None) or model_class.from_config  # Auto* classes
    with skip_weight_init():
        model = build(config, attn_implementation="sdpa", dtype=torch.float32)
    return model.eval()


def load_pairs(model: nn.Module, pairs: list[ModulePair]) -> None:
    """Load each pair's state dict into the transformers ``model`` under the name its
    module has there, all at once with ``strict=True`` (every tensor of ``model`` must come
    from a pair)."""
    names = {id(module): name for name, module in model.named_modules()}
    state: dict[str, torch.Tensor] = {}
    owner: dict[str, str] = {}
    for pair in pairs:
        if id(pair.theirs) not in names:
            raise RuntimeError(f"{pair.label}: the transformers module is not part of {type(model).__name__}")
        prefix = names[id(pair.theirs)]
        theirs_keys = set(pair.theirs.state_dict())
        ours = pair.ours.state_dict()
        if set(ours) != theirs_keys:
            extra, missing = sorted(set(ours) - theirs_keys), sorted(theirs_keys - set(ours))
            raise UserError(
                f"cannot export the {pair.label} to {type(model).__name__}: tensor names differ "
                f"(ours only: {extra[:3]}, transformers only: {missing[:3]}); the installed transformers "
                "does not match this model's layout"
            )
        for key, tensor in ours.items():
            full = f"{prefix}.{key}" if prefix else key
            state[full] = tensor
            owner[full] = pair.label
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = " ".join(str(exc).split())[:400]
        raise UserError(f"cannot load our tensors into {type(model).__name__}: {first}") from exc


def cast(model: nn.Module, dtype: torch.dtype | None) -> nn.Module:
    """The model in ``dtype`` (None: unchanged)."""
    return model if dtype is None else model.to(dtype)


def save_model(model: Any, out: Path, max_shard_size: int | str) -> list[Path]:
    """``save_pretrained`` (safetensors; shards and an index over ``max_shard_size``)."""
    model.save_pretrained(str(out), max_shard_size=max_shard_size)
    return sorted(out.glob("*.safetensors"))


def save_tokenizer(tokenizer: TextTokenizer | None, out: Path, chat_template: str = CHAT_TEMPLATE) -> None:
    """The run's tokenizer with the conversation template (nothing without a tokenizer)."""
    if tokenizer is None:
        return
    hf = copy.deepcopy(tokenizer.hf)
    hf.chat_template = chat_template
    hf.save_pretrained(str(out))


def save_generation_config(out: Path, tokenizer: TextTokenizer | None) -> None:
    """Greedy decoding that stops at our EOS and pads with our pad token."""
    from transformers import GenerationConfig

    if tokenizer is None:
        return
    GenerationConfig(
        bos_token_id=None, eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id
    ).save_pretrained(str(out))


def llm_pairs(model: MultimodalLM, hf: Any) -> list[ModulePair]:
    """Our LLM's decoder and LM head with the transformers model's."""
    llm: Any = model.llm
    return [
        ModulePair(llm.get_decoder(), hf.get_decoder(), "LLM decoder"),
        ModulePair(llm.get_output_embeddings(), hf.get_output_embeddings(), "LM head"),
    ]


def export_causal_lm(
    model: MultimodalLM,
    tokenizer: TextTokenizer | None,
    out: Path,
    dtype: torch.dtype | None,
    max_shard_size: int | str,
) -> Any:
    """A text-only model as its transformers ``*ForCausalLM``; returns the saved model."""
    from transformers import AutoModelForCausalLM

    config = text_config(model.llm, tokenizer)
    hf = instantiate(AutoModelForCausalLM, config)
    load_pairs(hf, llm_pairs(model, hf))
    hf = cast(hf, dtype)
    save_model(hf, out, max_shard_size)
    save_tokenizer(tokenizer, out)
    save_generation_config(out, tokenizer)
    return hf
