"""Real-size shipped model configs: each builds on the meta device (no memory, no weights)
with exactly the parameter count of the released model it reproduces, part by part.

The expected counts are written out as arithmetic over the released config.json values
(the helpers below count what transformers builds for each block), and each total is
checked against the published size. Published totals are the parameter counts of the
released safetensors checkpoints (the "params" figure on each Hugging Face model page).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mmpretrain.config import load_config, shipped_config_names
from mmpretrain.model.build import build_model, media_processors
from mmpretrain.model.multimodal import MultimodalLM
from mmpretrain.run_config import RunConfig

REAL_SIZE = ("llava15_7b", "nanovlm_222m", "qwen2_audio_7b", "omni_7b")


# ---------------------------------------------------------------------------- arithmetic


def decoder(
    vocab: int,
    hidden: int,
    inter: int,
    layers: int,
    heads: int,
    kv_heads: int,
    *,
    tied: bool,
    qkv_bias: bool = False,
) -> int:
    """Llama/Qwen2 decoder: token embedding (+ LM head unless tied); per block q/k/v/o
    projections (q/k/v biases on Qwen2), gate/up/down MLP and two RMSNorms; final RMSNorm."""
    head_dim = hidden // heads
    q, kv = heads * head_dim, kv_heads * head_dim
    attention = hidden * q + 2 * hidden * kv + q * hidden + ((q + 2 * kv) if qkv_bias else 0)
    block = attention + 3 * hidden * inter + 2 * hidden
    return vocab * hidden * (1 if tied else 2) + layers * block + hidden


def vit_block(hidden: int, inter: int) -> int:
    """Pre-LN transformer block with biases (CLIP, SigLIP, Whisper encoder): q/k/v/out
    Linears, two LayerNorms, fc1/fc2."""
    return (
        4 * (hidden * hidden + hidden) + 2 * 2 * hidden + (hidden * inter + inter) + (inter * hidden + hidden)
    )


def clip_vision(hidden: int, inter: int, layers: int, patch: int, image: int) -> int:
    """CLIPVisionModel: class embedding, bias-free patch conv, (n + 1) positions,
    pre_layrnorm, blocks, post_layernorm."""
    patches = (image // patch) ** 2
    embeddings = hidden + 3 * patch * patch * hidden + (patches + 1) * hidden
    return embeddings + 2 * hidden + layers * vit_block(hidden, inter) + 2 * hidden


def siglip_vision(hidden: int, inter: int, layers: int, patch: int, image: int) -> int:
    """SiglipVisionModel without its pooling head: patch conv with bias, n positions,
    blocks, post_layernorm."""
    patches = (image // patch) ** 2
    embeddings = 3 * patch * patch * hidden + hidden + patches * hidden
    return embeddings + layers * vit_block(hidden, inter) + 2 * hidden


def siglip_head(hidden: int, inter: int) -> int:
    """SigLIP's attention-pooling head (never built by hf_siglip): probe, MultiheadAttention
    (in_proj 3h x h + 3h, out_proj), LayerNorm, fc1/fc2."""
    return (
        hidden
        + (3 * hidden * hidden + 3 * hidden)
        + (hidden * hidden + hidden)
        + 2 * hidden
        + (hidden * inter + inter + inter * hidden + hidden)
    )


def siglip_text(hidden: int, inter: int, layers: int, vocab: int, positions: int) -> int:
    """SiglipTextModel: token and position embeddings, blocks, final LayerNorm, head Linear."""
    return (
        vocab * hidden
        + positions * hidden
        + layers * vit_block(hidden, inter)
        + 2 * hidden
        + (hidden * hidden + hidden)
    )


def whisper_encoder(hidden: int, inter: int, layers: int, n_mels: int, positions: int) -> int:
    """WhisperEncoder / Qwen2AudioEncoder (its pooling has no parameters): conv1 (k=3),
    conv2 (k=3, stride 2), positions (a frozen sinusoidal table, still a parameter), blocks
    (k_proj has no bias: -hidden), final LayerNorm."""
    convs = (n_mels * hidden * 3 + hidden) + (hidden * hidden * 3 + hidden)
    return convs + positions * hidden + layers * (vit_block(hidden, inter) - hidden) + 2 * hidden


def whisper_decoder(hidden: int, inter: int, layers: int, vocab: int, positions: int) -> int:
    """WhisperDecoder (proj_out is tied to embed_tokens): embeddings, positions, blocks with
    self- and cross-attention (k_proj bias-free, three LayerNorms), final LayerNorm."""
    attention = 4 * (hidden * hidden + hidden) - hidden
    block = 2 * attention + 3 * 2 * hidden + (hidden * inter + inter) + (inter * hidden + hidden)
    return vocab * hidden + positions * hidden + layers * block + 2 * hidden


def linear(n_in: int, n_out: int, bias: bool = True) -> int:
    return n_in * n_out + (n_out if bias else 0)


# ---------------------------------------------------------------------------- helpers


def build_on_meta(name: str) -> MultimodalLM:
    config: RunConfig = load_config(f"models/{name}")
    with torch.device("meta"):
        model = build_model(config.model)
    return model


def numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def part_counts(model: MultimodalLM) -> dict[str, int]:
    """Parameters per part, named as in ``parameter_table``, plus ``total``."""
    counts = {"llm": numel(model.llm)}
    counts |= {f"encoders.{name}": numel(module) for name, module in model.encoders.items()}
    counts |= {f"connectors.{modality}": numel(module) for modality, module in model.connectors.items()}
    counts["total"] = sum(counts.values())
    assert counts["total"] == numel(model)  # nothing outside the parts
    return counts


def assert_all_on_meta(model: nn.Module) -> None:
    off_meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.device.type != "meta"]
    assert not off_meta, f"built off the meta device: {off_meta[:5]}"


# ---------------------------------------------------------------------------- configs


@pytest.mark.parametrize("name", REAL_SIZE)
def test_shipped_and_model_only(name: str) -> None:
    assert f"models/{name}" in shipped_config_names()
    config: RunConfig = load_config(f"models/{name}")  # a model-only config is a valid RunConfig
    assert config.data is None
    parts = [config.model.llm, *config.model.encoders.values()]
    # random init: each YAML shows a commented example path instead
    assert all(part.model_dump()["pretrained"] is None for part in parts)


# ---------------------------------------------------------------------------- counts


def test_llava15_7b() -> None:
    # llava-hf/llava-1.5-7b-hf: 7,063,427,072 parameters (LlavaForConditionalGeneration:
    # vision_tower + multi_modal_projector + language_model + lm_head), matched exactly.
    model = build_on_meta("llava15_7b")
    assert_all_on_meta(model)
    counts = part_counts(model)
    # Vicuna-7B v1.5 = Llama-2-7B shape, vocab 32000 + <image> + <pad> padded to 32064, untied:
    # 2 * 32064 * 4096 + 32 * (4 * 4096^2 + 3 * 4096 * 11008 + 2 * 4096) + 4096
    llm = decoder(32064, 4096, 11008, 32, 32, 32, tied=False)
    # CLIP ViT-L/14-336: 1024 + 3*14*14*1024 + 577*1024 + 2*1024 + 24 * 12,596,224 + 2*1024
    vision = clip_vision(1024, 4096, 24, 14, 336)
    # mlp: Linear(1024 -> 4096) + GELU + Linear(4096 -> 4096), with biases
    connector = linear(1024, 4096) + linear(4096, 4096)
    assert (llm, vision, connector) == (6_738_939_904, 303_507_456, 20_979_712)
    assert counts == {
        "llm": llm,
        "encoders.vision": vision,
        "connectors.image": connector,
        "total": 7_063_427_072,
    }


def test_nanovlm_222m() -> None:
    # nanoVLM-222M (lusxvr/nanoVLM-222M; github.com/huggingface/nanoVLM README: "results in a
    # 222M nanoVLM"): its ViT (SigLIP-B/16-224 without the pooling head), SmolLM2-135M with
    # tied embeddings and its bias-free pixel-shuffle projector are exactly our three parts,
    # 222,081,600 parameters.
    model = build_on_meta("nanovlm_222m")
    assert_all_on_meta(model)
    counts = part_counts(model)
    # SmolLM2-135M (134,515,008): 49152 * 576 + 30 * (576*576 + 2*576*192 + 576*576
    #   + 3*576*1536 + 2*576) + 576
    llm = decoder(49152, 576, 1536, 30, 9, 3, tied=True)
    # SigLIP-B/16-224 vision tower: 3*16*16*768 + 768 + 196*768 + 12 * 7,087,872 + 2*768.
    # google/siglip-base-patch16-224 (203,155,970 with its text tower) ships the tower with its
    # attention-pooling head, 92,884,224; hf_siglip never builds the head (7,087,104), nor
    # does nanoVLM's ViT.
    vision = siglip_vision(768, 3072, 12, 16, 224)
    # pixel shuffle 2: 196 tokens of 768 -> 49 tokens of 4 * 768 = 3072; Linear(3072 -> 576), no bias
    connector = linear(768 * 2 * 2, 576, bias=False)
    assert (llm, vision, connector) == (134_515_008, 85_797_120, 1_769_472)
    assert vision + siglip_head(768, 3072) == 92_884_224
    assert vision + siglip_head(768, 3072) + siglip_text(768, 3072, 12, 32000, 64) + 2 == 203_155_970
    assert counts == {
        "llm": llm,
        "encoders.vision": vision,
        "connectors.image": connector,
        "total": 222_081_600,
    }
    assert round(counts["total"], -6) == 222_000_000


def test_qwen2_audio_7b() -> None:
    # Qwen/Qwen2-Audio-7B: 8,397,094,912 parameters (Qwen2AudioForConditionalGeneration:
    # audio_tower + multi_modal_projector + language_model + lm_head), matched exactly.
    model = build_on_meta("qwen2_audio_7b")
    assert_all_on_meta(model)
    counts = part_counts(model)
    # Qwen2 7B decoder (q/k/v biases), vocab 156032, untied:
    # 2 * 156032 * 4096 + 32 * (4 * 4096^2 + 3 * 4096 + 3 * 4096 * 11008 + 2 * 4096) + 4096
    llm = decoder(156032, 4096, 11008, 32, 32, 32, tied=False, qkv_bias=True)
    # audio tower, Whisper-large-v3 sized: (128*1280*3 + 1280) + (1280*1280*3 + 1280)
    #   + 1500*1280 + 32 * 19,676,160 + 2*1280; stride-2 average pooling has no parameters
    audio = whisper_encoder(1280, 5120, 32, 128, 1500)
    # linear: Linear(1280 -> 4096) with bias
    connector = linear(1280, 4096)
    assert (llm, audio, connector) == (7_754_878_976, 636_968_960, 5_246_976)
    assert counts == {
        "llm": llm,
        "encoders.speech": audio,
        "connectors.audio": connector,
        "total": 8_397_094_912,
    }
    # the 1500 x 1280 sinusoidal position table is a frozen parameter (as in transformers)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    assert frozen == 1500 * 1280


def test_omni_7b() -> None:
    # No single released checkpoint: released parts, each matched to its published size.
    model = build_on_meta("omni_7b")
    assert_all_on_meta(model)
    counts = part_counts(model)
    # Qwen/Qwen2.5-7B: 7,615,616,512 parameters (Qwen2, q/k/v biases, GQA 28/4, vocab 152064, untied):
    # 2 * 152064 * 3584 + 28 * (3584^2 + 2*3584*512 + 3584^2 + (3584 + 2*512) + 3*3584*18944 + 2*3584) + 3584
    llm = decoder(152064, 3584, 18944, 28, 28, 4, tied=False, qkv_bias=True)
    assert llm == 7_615_616_512
    # google/siglip-so400m-patch14-384: 877,960,498 parameters = vision tower 428,225,600
    # (with its attention-pooling head, 15,238,352) + text tower 449,734,896 + logit scale and
    # bias (2). hf_siglip builds the tower without the head: 412,987,248.
    # 3*14*14*1152 + 1152 + 729*1152 + 27 * 15,239,504 + 2*1152
    vision = siglip_vision(1152, 4304, 27, 14, 384)
    head = siglip_head(1152, 4304)
    text = siglip_text(1152, 4304, 27, 32000, 64)
    assert (vision, head, text) == (412_987_248, 15_238_352, 449_734_896)
    assert vision + head + text + 2 == 877_960_498
    # openai/whisper-large-v3: 1,543,490,560 parameters = encoder 636,968,960 + decoder
    # 906,521,600 (proj_out tied to the token embedding). hf_whisper builds the encoder only.
    speech = whisper_encoder(1280, 5120, 32, 128, 1500)
    assert speech == 636_968_960
    assert speech + whisper_decoder(1280, 5120, 32, 51866, 448) == 1_543_490_560
    # image mlp (LLaVA-OneVision): Linear(1152 -> 3584) + GELU + Linear(3584 -> 3584), with biases
    image_connector = linear(1152, 3584) + linear(3584, 3584)
    # audio frame_stack_mlp (LLaMA-Omni's adaptor widths): 5 stacked 1280-wide frames:
    # Linear(6400 -> 2048) + GELU + Linear(2048 -> 3584), with biases
    audio_connector = linear(5 * 1280, 2048) + linear(2048, 3584)
    assert (image_connector, audio_connector) == (16_980_992, 20_452_864)
    assert counts == {
        "llm": llm,
        "encoders.speech": speech,
        "encoders.vision": vision,
        "connectors.audio": audio_connector,
        "connectors.image": image_connector,
        "total": 8_703_006_576,
    }


# ---------------------------------------------------------------------------- token counts


@pytest.mark.parametrize(
    ("name", "items"),
    [
        ("llava15_7b", {"image": ([3, 336, 336], 576)}),  # (336 / 14)^2, class token dropped
        ("nanovlm_222m", {"image": ([3, 224, 224], 49)}),  # (224 / 16)^2 / 2^2
        ("qwen2_audio_7b", {"audio": ([128, 3000], 750)}),  # 30 s: 3000 frames -> 1500 (conv) -> 750 (pool)
        ("omni_7b", {"image": ([3, 384, 384], 729), "audio": ([128, 3000], 300)}),  # 27^2; 1500 / 5
    ],
)
def test_media_tokens_per_item(name: str, items: dict[str, tuple[list[int], int]]) -> None:
    """A full-size image or a 30 s clip takes the LLM positions the released model gives it."""
    config: RunConfig = load_config(f"models/{name}")
    processors = media_processors(config.model)
    assert set(processors) == set(items)
    for modality, (shape, tokens) in items.items():
        assert processors[modality].num_tokens(torch.empty(shape, device="meta")) == tokens, modality
