"""SigLIP + pixel_shuffle_mlp (one bias-free Linear) + LLM -> Idefics3ForConditionalGeneration:
same logits (fp32, 1e-4), generate, image processor pixels, round trip; shapes that do not
map are refused with the parts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from export_helpers import (
    assert_logits_close,
    build,
    export,
    idefics3_config,
    image_item,
    our_batch,
    our_logits,
    picture,
    pixels,
)

from mmpretrain.data.tokenizer import TextTokenizer
from mmpretrain.export.importer import import_hf_model
from mmpretrain.export.mapping import UnmappableError, plan_hf_export


def test_idefics3_export_matches_ours(tokenizer: TextTokenizer, tmp_path: Path) -> None:
    from transformers import AutoImageProcessor, AutoModelForImageTextToText

    cfg = idefics3_config()
    model = build(cfg)
    target, _ = export(model, cfg, tokenizer, tmp_path)
    assert target == "idefics3"
    hf = AutoModelForImageTextToText.from_pretrained(tmp_path, local_files_only=True).eval()
    assert type(hf).__name__ == "Idefics3ForConditionalGeneration"
    assert json.loads((tmp_path / "config.json").read_text())["scale_factor"] == 2
    image_processor = AutoImageProcessor.from_pretrained(tmp_path, local_files_only=True, backend="pil")
    image = picture()  # square, at the tower's size: Idefics3 keeps the aspect ratio, ours stretches
    features = image_processor(images=[[image]], return_tensors="pt")
    item = image_item(cfg, image)
    assert item.num_tokens == 4  # (32 / 8)^2 patches / 2^2
    torch.testing.assert_close(
        features["pixel_values"][0, 0],
        pixels(item, image_processor.image_mean, image_processor.image_std),
        atol=1e-6,
        rtol=0,
    )
    batch = our_batch(tokenizer, ["User: ", item, "what shape?\nAssistant: "])
    with torch.no_grad():
        theirs = hf(input_ids=batch.input_ids, **features).logits
    assert_logits_close(our_logits(model, batch), theirs)
    generated = hf.generate(input_ids=batch.input_ids, **features, max_new_tokens=3, do_sample=False)
    assert generated.shape[1] == batch.input_ids.shape[1] + 3
    imported = import_hf_model(tmp_path)
    ours, back = model.state_dict(), imported.model.state_dict()
    assert set(ours) == set(back) and all(torch.equal(ours[n], back[n]) for n in ours)
    assert imported.config.connectors["image"].name == "pixel_shuffle_mlp"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (("model.connectors.image.hidden_layers=1",), "one bias-free Linear"),
        (("model.encoders.vision.final_norm=false",), "final_norm: false (Idefics3 applies post_layernorm"),
        (("model.encoders.vision.feature_layer=-2",), "feature_layer -2 (Idefics3 takes the last layer"),
    ],
    ids=["mlp-connector", "no-final-norm", "feature-layer"],
)
def test_idefics3_shapes_that_do_not_map(overrides: tuple[str, ...], expected: str) -> None:
    with pytest.raises(UnmappableError, match="--to safetensors") as info:
        plan_hf_export(idefics3_config(*overrides))
    assert expected in str(info.value)
