"""MultimodalLM: isolation with media, token-count checks, freezing, text-only parity."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from mmpretrain.config import load_config
from mmpretrain.data.decoders import DecodedSegment
from mmpretrain.data.layout import MediaDocument, MediaItem, MediaTokenIds, Part, layout_batch
from mmpretrain.data.packing import PackedDocument, build_text_batch
from mmpretrain.errors import DataFormatError
from mmpretrain.model.build import build_model, media_processors
from mmpretrain.model.packed import packed_logits
from mmpretrain.train.config import OptimConfig
from mmpretrain.train.optim import build_optimizer

VOCAB = 2048
IDS = MediaTokenIds(
    placeholder={"image": 2000, "audio": 2001},
    begin={"image": 2002, "audio": 2003},
    end={"image": 2004, "audio": 2005},
)
PAD = 2006


def omni(attn: str = "sdpa", **trainable: bool) -> Any:
    overrides = [f"model.llm.attn_implementation={attn}"]
    if trainable:
        overrides.append(
            "model.trainable={" + ", ".join(f'"{k}": {str(v).lower()}' for k, v in trainable.items()) + "}"
        )
    return load_config("models/omni_tiny", overrides).model


def picture(seed: int) -> DecodedSegment:
    image = Image.new("RGB", (64, 48), (128, 128, 128))
    ImageDraw.Draw(image).ellipse((8 + seed, 8, 40, 40), fill=(200, 40 * seed % 255, 40))
    return DecodedSegment(kind="image", image=image)


def clip(seconds: float, hz: float) -> DecodedSegment:
    t = np.arange(int(16000 * seconds)) / 16000
    return DecodedSegment(
        kind="audio", audio=(0.3 * np.sin(2 * math.pi * hz * t)).astype("float32"), sample_rate=16000
    )


def documents(cfg: Any) -> list[MediaDocument]:
    processors = media_processors(cfg)

    def item(segment: DecodedSegment) -> MediaItem:
        processor = processors[segment.kind]
        inputs = processor.preprocess(segment)
        seconds = len(segment.audio) / 16000 if segment.audio is not None else 0.0
        return MediaItem(segment.kind, processor.num_tokens(inputs), inputs, seconds)

    def text(n: int, start: int) -> list[int]:
        return [(start + 7 * i) % 1900 + 1 for i in range(n)]

    parts: list[list[Part]] = [
        [text(5, 1), item(picture(1)), text(4, 2)],
        [item(clip(0.8, 440.0)), text(6, 3)],
        [text(3, 4), item(picture(2)), item(clip(0.4, 220.0)), item(picture(3)), text(2, 5)],
        [text(9, 6)],
    ]
    return [MediaDocument(f"doc{i}", p) for i, p in enumerate(parts)]


@pytest.mark.parametrize("attn", ["sdpa", "eager", "mmpt_chunked"])
def test_packed_media_documents_equal_each_document_alone(attn: str) -> None:
    cfg = omni(attn)
    model = build_model(cfg).eval()
    docs = documents(cfg)
    seq_len = sum(d.length for d in docs) + 5
    batch = layout_batch([docs], seq_len, PAD, IDS)
    batch.validate()
    assert set(batch.media) == {"image", "audio"}
    with torch.no_grad():
        packed = model(batch)
        start = 0
        for doc in docs:
            alone = model(layout_batch([[doc]], doc.length, PAD, IDS))
            torch.testing.assert_close(packed[0, start : start + doc.length], alone[0], atol=1e-5, rtol=0)
            start += doc.length


def test_text_only_multimodal_lm_matches_the_bare_llm() -> None:
    model = build_model(load_config("models/llama_tiny").model).eval()
    assert all(name.startswith("llm.") for name, _ in model.named_parameters())
    batch = build_text_batch([[PackedDocument("a", [5, 6, 7]), PackedDocument("b", [8, 9])]], 8, 0)
    with torch.no_grad():
        torch.testing.assert_close(model(batch), packed_logits(model.llm, batch), atol=1e-6, rtol=0)


def test_placeholder_count_mismatch_names_the_sample() -> None:
    cfg = omni()
    model = build_model(cfg).eval()
    doc = documents(cfg)[0]
    image = doc.parts[1]
    assert isinstance(image, MediaItem)
    wrong = MediaDocument("bad/17", [doc.parts[0], MediaItem("image", image.num_tokens - 1, image.inputs)])
    batch = layout_batch([[wrong]], wrong.length, PAD, IDS)
    with pytest.raises(
        DataFormatError, match=r"sample 'bad/17': its image item has 15 placeholders but .* 16"
    ):
        model(batch)


def test_frozen_parts_get_no_gradient_and_no_optimizer_state() -> None:
    cfg = omni(llm=False, encoders=False)
    model = build_model(cfg)
    optimizer = build_optimizer(model, OptimConfig())
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    connector_params = {id(p) for p in model.connectors.parameters()}
    assert optimized == connector_params
    batch = layout_batch([documents(cfg)], 200, PAD, IDS)
    logits = model(batch)
    logits.float().logsumexp(-1).mean().backward()
    assert all(p.grad is None for p in model.llm.parameters())
    assert all(p.grad is None for p in model.encoders.parameters())
    assert all(p.grad is not None for p in model.connectors.parameters())


def test_trainable_keys_are_validated() -> None:
    from mmpretrain.errors import ConfigError

    with pytest.raises(ConfigError, match=r"trainable has unknown parts \['encoders.nope'\]"):
        load_config("models/vlm_tiny", ['model.trainable={"encoders.nope": false}'])


def test_save_and_load_pretrained_round_trip(tmp_path: Any) -> None:
    from mmpretrain.model.multimodal import MultimodalLM

    cfg = omni()
    model = build_model(cfg).eval()
    model.save_pretrained(str(tmp_path / "saved"), cfg)
    loaded = MultimodalLM.from_pretrained(str(tmp_path / "saved")).eval()
    batch = layout_batch([documents(cfg)], 200, PAD, IDS)
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch), model(batch), atol=0, rtol=0)
    from mmpretrain.errors import UserError

    with pytest.raises(UserError, match="is not a saved MultimodalLM"):
        MultimodalLM.from_pretrained(str(tmp_path))


def test_activation_checkpointing_gives_the_same_gradients() -> None:
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        cfg = load_config(
            "models/omni_tiny", [f"model.activation_checkpointing={str(checkpointing).lower()}"]
        ).model
        model = build_model(cfg)
        batch = layout_batch([documents(cfg)], 200, PAD, IDS)
        model(batch).float().logsumexp(-1).mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-4, msg=name)
