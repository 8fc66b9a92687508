"""CLIP/SigLIP + mlp + LLM -> LlavaForConditionalGeneration: AutoProcessor reproduces our
token layout and pixels, logits match ours (fp32, 1e-4), generate runs, the import is the
exact round trip, and a corrupted export fails naming the file and the tensor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from export_helpers import (
    assert_logits_close,
    build,
    export,
    image_item,
    llava_config,
    our_batch,
    our_logits,
    picture,
    pixels,
)

from mmpretrain.data.tokenizer import TextTokenizer
from mmpretrain.errors import UserError
from mmpretrain.export.importer import import_hf_model

MESSAGES = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what shape is it?"}]}]


@pytest.mark.parametrize(
    ("tower", "overrides"),
    [
        ("hf_siglip", ()),  # the demo VLM (stretch resize)
        ("hf_clip", ("model.encoders.vision.resize=center_crop",)),
        ("hf_clip", ("model.encoders.vision.resize=pad", "model.encoders.vision.select_strategy=full")),
    ],
    ids=["siglip", "clip-default-crop", "clip-full-pad"],
)
def test_llava_export_matches_ours(
    tower: str, overrides: tuple[str, ...], tokenizer: TextTokenizer, tmp_path: Path
) -> None:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    cfg = llava_config(tower, *overrides)
    model = build(cfg)
    target, _ = export(model, cfg, tokenizer, tmp_path)
    assert target == "llava"
    hf = AutoModelForImageTextToText.from_pretrained(tmp_path, local_files_only=True).eval()
    assert type(hf).__name__ == "LlavaForConditionalGeneration"
    processor = AutoProcessor.from_pretrained(tmp_path, local_files_only=True, backend="pil")
    image = picture(48, 40)  # not square: the resize mode matters
    prompt = processor.apply_chat_template(MESSAGES, add_generation_prompt=True)
    assert prompt == "User: <image_start><image><image_end>what shape is it?\nAssistant: "
    inputs = processor(images=image, text=prompt, return_tensors="pt")
    item = image_item(cfg, image)
    batch = our_batch(tokenizer, ["User: ", item, "what shape is it?\nAssistant: "])
    assert torch.equal(inputs["input_ids"], batch.input_ids)  # <image_start> + N x <image> + <image_end>
    mean, std = processor.image_processor.image_mean, processor.image_processor.image_std
    ours_pixels = pixels(item, mean, std)
    if "resize=pad" in " ".join(overrides):  # LLaVA pads with int(mean * 255), ours rounds: one level off
        torch.testing.assert_close(inputs["pixel_values"][0], ours_pixels, atol=2 / 255 / min(std), rtol=0)
        inputs["pixel_values"] = ours_pixels[None]
    else:
        torch.testing.assert_close(inputs["pixel_values"][0], ours_pixels, atol=1e-6, rtol=0)
    with torch.no_grad():
        theirs = hf(**inputs).logits
    assert_logits_close(our_logits(model, batch), theirs)
    generated = hf.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 3


def test_import_is_the_exact_round_trip(tokenizer: TextTokenizer, tmp_path: Path) -> None:
    cfg = llava_config("hf_clip")
    model = build(cfg)
    export(model, cfg, tokenizer, tmp_path / "hf")
    imported = import_hf_model(tmp_path / "hf")
    assert imported.model_type == "llava"
    vision = imported.config.encoders["vision"]
    assert (vision.name, vision.feature_layer, vision.select_strategy) == ("hf_clip", -2, "default")
    ours, back = model.state_dict(), imported.model.state_dict()
    assert set(ours) == set(back)
    assert all(torch.equal(ours[name], back[name]) for name in ours)
    assert imported.tokenizer is not None and imported.tokenizer.image_id == tokenizer.image_id
    item = image_item(cfg, picture())
    assert imported.config.encoders["vision"].resize == cfg.encoders["vision"].resize
    batch = our_batch(tokenizer, ["a ", item, "b"])
    torch.testing.assert_close(our_logits(imported.model, batch), our_logits(model, batch), atol=0, rtol=0)
    imported.save_pretrained(tmp_path / "native")
    from mmpretrain.model.multimodal import MultimodalLM

    again = MultimodalLM.from_pretrained(str(tmp_path / "native")).eval()
    torch.testing.assert_close(our_logits(again, batch), our_logits(model, batch), atol=0, rtol=0)


def test_corrupted_export_names_the_file_and_tensor(tokenizer: TextTokenizer, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    cfg = llava_config()
    model = build(cfg)
    out = tmp_path / "hf"
    export(model, cfg, tokenizer, out, max_shard_size="150KB")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    # transformers 5 writes Llava under its original checkpoint names (multi_modal_projector.*)
    (name,) = [n for n in index["weight_map"] if n.endswith("multi_modal_projector.linear_1.weight")]
    shard = out / index["weight_map"][name]
    tensors = load_file(str(shard))
    tensors[name] = tensors[name][:, :-1].contiguous()
    save_file(tensors, str(shard), metadata={"format": "pt"})
    with pytest.raises(
        UserError, match=rf"{shard.name}: tensor '{name}' has shape \[64, 63\] but config.json gives"
    ):
        import_hf_model(out)
    shard.unlink()
    with pytest.raises(UserError, match=rf"{shard.name} is missing: the index lists it for .* tensors"):
        import_hf_model(out)
