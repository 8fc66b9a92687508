"""Vision encoders: tiny random-init builds, forward/backward, token counts equal to real
output lengths (tiling and padded tile batches included), normalisation, feature-layer and
class-token options, local pretrained round trips, offline hub errors."""

from __future__ import annotations

import copy
from multiprocessing.reduction import ForkingPickler
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from mmpretrain.data.decoders import DecodedSegment
from mmpretrain.data.layout import _stack
from mmpretrain.encoders.vision_common import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, select_grid
from mmpretrain.errors import ConfigError, UserError
from mmpretrain.registry import ENCODERS

VISION = ["hf_clip", "hf_siglip", "open_clip", "timm"]
TINY_HF: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_layers": 2,
    "num_heads": 2,
    "patch_size": 8,
    "image_size": 32,
}
TINY: dict[str, dict[str, Any]] = {
    "hf_clip": TINY_HF,
    "hf_siglip": TINY_HF,
    "open_clip": {
        "model": "ViT-B-32",
        "image_size": 32,
        "vision_cfg": {"width": 32, "layers": 2, "head_width": 16, "patch_size": 8},
    },
    "timm": {
        "model": "vit_tiny_patch16_224",
        "image_size": 32,
        "model_kwargs": {"embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": 8, "img_size": 32},
    },
}
PATCHES = 16  # (32 / 8) ** 2 per tile
TILING = {"grid_options": [[1, 1], [1, 2], [2, 1], [2, 2]], "thumbnail": True}


def tiny_config(name: str, **overrides: Any) -> Any:
    config_class = ENCODERS.get(name).config_class
    assert config_class is not None
    return config_class(**{"name": name, **TINY[name], **overrides})


def build(name: str, seed: int = 0, **overrides: Any) -> Any:
    torch.manual_seed(seed)
    return ENCODERS.build(tiny_config(name, **overrides)).eval()


def demo_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """A demo-like scene: a few coloured shapes on a light background."""
    gen = torch.Generator().manual_seed(seed)
    image = Image.new("RGB", (width, height), (235, 230, 220))
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x = int(torch.randint(0, max(1, width - 4), (), generator=gen))
        y = int(torch.randint(0, max(1, height - 4), (), generator=gen))
        size = int(torch.randint(3, max(4, min(width, height) // 2), (), generator=gen))
        colour = tuple(int(c) for c in torch.randint(0, 256, (3,), generator=gen))
        if torch.rand((), generator=gen) < 0.5:
            draw.rectangle((x, y, x + size, y + size), fill=colour)
        else:
            draw.ellipse((x, y, x + size, y + size), fill=colour)
    return image


def segment(image: Image.Image) -> DecodedSegment:
    return DecodedSegment(kind="image", image=image)


@pytest.fixture(scope="module")
def tiled_encoders() -> dict[str, Any]:
    """One tiny tiled encoder per backend, built once for the property test."""
    return {name: build(name, tiling=TILING) for name in VISION}


# ---------------------------------------------------------------------------- basics


def test_vision_encoders_are_registered() -> None:
    assert set(VISION) <= set(ENCODERS.names())
    for name in VISION:
        assert tiny_config(name).modality() == "image"


def _may_lack_grad(name: str, param: str) -> bool:
    # transformers towers keep Llava's layout: layers after feature_layer (-2: the last of
    # 2) and post_layernorm run unused. timm/open_clip prune everything unused at build.
    return name.startswith("hf_") and ("post_layernorm" in param or "layers.1." in param)


@pytest.mark.parametrize("name", VISION)
def test_forward_backward_shapes_and_grads(name: str) -> None:
    encoder = build(name).train()
    items = [
        encoder.preprocess(segment(demo_image(48, 40, seed=1))),
        encoder.preprocess(segment(demo_image(40, 56, 2))),
    ]
    assert items[0].shape == (3, 32, 32)
    inputs, sizes = _stack(items)
    features, lengths = encoder(inputs, sizes)
    tokens = encoder.num_tokens(items[0])
    assert tokens == PATCHES
    assert features.shape == (2, tokens, encoder.out_dim) == (2, tokens, 32)
    assert lengths.tolist() == [tokens, tokens]
    features.pow(2).mean().backward()
    missing = [n for n, p in encoder.named_parameters() if p.grad is None]
    assert all(_may_lack_grad(name, n) for n in missing), missing
    with_grad = [p for p in encoder.parameters() if p.grad is not None]
    assert with_grad and any(p.grad.abs().sum() > 0 for p in with_grad)


@pytest.mark.parametrize("name", VISION)
def test_processor_is_weight_free_and_picklable(name: str) -> None:
    processor = tiny_config(name, tiling=TILING).processor()
    item = processor.preprocess(segment(demo_image(70, 30)))
    assert ForkingPickler.dumps(processor)  # spawned data workers receive it pickled
    clone = copy.deepcopy(processor)  # same reduce protocol as unpickling
    assert clone.num_tokens(item) == processor.num_tokens(item) == item.shape[0] * PATCHES


# ---------------------------------------------------------------------------- tiling


def test_grid_selection_follows_aspect_ratio_and_resolution() -> None:
    grids = ((1, 1), (1, 2), (2, 1), (2, 2))
    assert select_grid(32, 32, grids, 32) == (1, 1)  # fits one tile, more would only pad
    assert select_grid(64, 32, grids, 32) == (1, 2)  # wide: one row, two columns
    assert select_grid(32, 64, grids, 32) == (2, 1)  # tall
    assert select_grid(200, 200, grids, 32) == (2, 2)  # large: most pixels kept
    assert select_grid(300, 20, grids, 32) == (1, 2)


@pytest.mark.parametrize(
    ("size", "tiles"),
    [((32, 32), 1), ((64, 32), 3), ((32, 64), 3), ((128, 128), 5), ((20, 20), 1)],
)
def test_tiles_and_thumbnail(size: tuple[int, int], tiles: int) -> None:
    processor = tiny_config("hf_clip", tiling=TILING).processor()
    item = processor.preprocess(segment(demo_image(*size)))
    assert item.shape == (tiles, 3, 32, 32)
    no_thumb = tiny_config("hf_clip", tiling={**TILING, "thumbnail": False}).processor()
    assert no_thumb.preprocess(segment(demo_image(*size))).shape[0] == (tiles - 1 if tiles > 1 else 1)


def _check_batch(encoder: Any, images: list[Image.Image]) -> None:
    items = [encoder.preprocess(segment(image)) for image in images]
    inputs, sizes = _stack(items)
    features, lengths = encoder(inputs, sizes)
    expected = [encoder.num_tokens(item) for item in items]
    assert lengths.tolist() == expected
    assert features.shape[:2] == (len(items), max(expected))
    for item, feats, length in zip(items, features, expected, strict=True):
        assert feats[length:].abs().sum() == 0  # padding positions stay zero
        alone, alone_lengths = encoder(item[None], [])  # padded tiles must not change anything
        assert alone_lengths.tolist() == [length]
        torch.testing.assert_close(feats[:length], alone[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", VISION)
def test_mixed_tile_counts_in_one_batch(name: str, tiled_encoders: dict[str, Any]) -> None:
    encoder = tiled_encoders[name]
    images = [demo_image(32, 32), demo_image(64, 32, 1), demo_image(128, 128, 2)]  # 1, 3 and 5 tiles
    _check_batch(encoder, images)
    items = [encoder.preprocess(segment(image)) for image in images]
    assert [item.shape[0] for item in items] == [1, 3, 5]


@pytest.mark.parametrize("name", VISION)
@settings(max_examples=6, deadline=None, derandomize=True)
@given(sizes=st.lists(st.tuples(st.integers(8, 140), st.integers(8, 140)), min_size=1, max_size=3))
def test_num_tokens_equals_output_length(
    name: str, tiled_encoders: dict[str, Any], sizes: list[tuple[int, int]]
) -> None:
    images = [demo_image(w, h, seed=i) for i, (w, h) in enumerate(sizes)]
    with torch.no_grad():
        _check_batch(tiled_encoders[name], images)


def test_forward_rejects_bad_sizes() -> None:
    encoder = build("hf_clip", tiling=TILING)
    inputs = torch.zeros(2, 3, 3, 32, 32)
    with pytest.raises(UserError, match="sizes"):
        encoder(inputs, [1, 4])


# ---------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize(
    ("name", "mean", "std"),
    [
        ("hf_clip", CLIP_MEAN, CLIP_STD),
        ("open_clip", CLIP_MEAN, CLIP_STD),
        ("hf_siglip", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        ("timm", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # vit_tiny_patch16_224's pretrained config
    ],
)
@pytest.mark.parametrize("resize", ["center_crop", "stretch"])
def test_constant_colour_normalises_to_formula(
    name: str, mean: tuple[float, ...], std: tuple[float, ...], resize: str
) -> None:
    colour = (200, 100, 50)
    processor = tiny_config(name, resize=resize).processor()
    pixels = processor.preprocess(segment(Image.new("RGB", (50, 37), colour)))
    assert pixels.dtype == torch.uint8  # the encoder normalises in its forward
    item = processor.transform.normalize(pixels)
    expected = (torch.tensor(colour) / 255 - torch.tensor(mean)) / torch.tensor(std)
    torch.testing.assert_close(item, expected.view(3, 1, 1).expand(3, 32, 32), atol=1e-5, rtol=0)


def test_timm_defaults_come_from_the_model_else_imagenet() -> None:
    config_class = ENCODERS.get("timm").config_class
    assert config_class is not None
    transform = config_class(name="timm", model="resnet18", image_size=32).processor().transform
    assert transform.mean == IMAGENET_MEAN and transform.std == IMAGENET_STD


def test_custom_mean_std_and_pad_mode() -> None:
    processor = tiny_config("hf_clip", mean=(0.2, 0.4, 0.6), std=(0.1, 0.2, 0.3), resize="pad").processor()
    item = processor.transform.normalize(
        processor.preprocess(segment(Image.new("RGB", (64, 32), (51, 102, 153))))
    )
    expected = (torch.tensor([51, 102, 153]) / 255 - torch.tensor([0.2, 0.4, 0.6])) / torch.tensor(
        [0.1, 0.2, 0.3]
    )
    torch.testing.assert_close(item[:, 16, :], expected.view(3, 1).expand(3, 32), atol=1e-5, rtol=0)
    assert item[:, 0, :].abs().max() < 0.05  # padding rows take the mean colour: about 0


# ---------------------------------------------------------------------------- options


def _features(encoder: Any, seed: int = 3) -> torch.Tensor:
    item = encoder.preprocess(segment(demo_image(40, 40, seed)))
    with torch.no_grad():
        return encoder(item[None], [])[0][0]


@pytest.mark.parametrize("name", ["timm", "open_clip"])
def test_class_token_and_feature_layer(name: str) -> None:
    base = _features(build(name))
    with_class = build(name, keep_class_token=True)
    assert with_class.num_tokens(torch.zeros(3, 32, 32)) == PATCHES + 1
    kept = _features(with_class)
    assert kept.shape[0] == PATCHES + 1
    torch.testing.assert_close(kept[1:], base)
    first = build(name, feature_layer=0)
    assert sum(p.numel() for p in first.parameters()) < sum(p.numel() for p in build(name).parameters())
    early = _features(first)
    assert early.shape == base.shape and not torch.allclose(early, base)
    normed = _features(build(name, final_norm=True))
    assert not torch.allclose(normed, base)
    with pytest.raises(ConfigError, match="feature_layer"):
        build(name, feature_layer=2)


def test_hf_clip_select_strategy_and_feature_layer() -> None:
    default = _features(build("hf_clip"))
    full_encoder = build("hf_clip", select_strategy="full")
    assert full_encoder.num_tokens(torch.zeros(3, 32, 32)) == PATCHES + 1
    full = _features(full_encoder)
    assert default.shape[0] == PATCHES and full.shape[0] == PATCHES + 1
    torch.testing.assert_close(full[1:], default)
    last = _features(build("hf_clip", feature_layer=-1))
    assert last.shape == default.shape and not torch.allclose(last, default)
    with pytest.raises(ConfigError, match="feature_layer"):
        build("hf_clip", feature_layer=3)  # 2 layers: hidden_states has 3 entries


def test_hf_siglip_default_keeps_every_patch() -> None:
    full = _features(build("hf_siglip"))
    default = _features(build("hf_siglip", select_strategy="default"))
    assert full.shape[0] == default.shape[0] == PATCHES
    torch.testing.assert_close(full, default)
    assert not any("head" in n for n, _ in build("hf_siglip").named_parameters())


def test_hf_image_size_other_than_pretrained_interpolates(tmp_path: Path) -> None:
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(0)
    SiglipVisionModel(SiglipVisionConfig(**_hf_kwargs())).save_pretrained(tmp_path)
    encoder = build("hf_siglip", pretrained=str(tmp_path), image_size=48)
    assert encoder.num_tokens(torch.zeros(3, 48, 48)) == 36
    assert _features(encoder).shape == (36, 32)


# ---------------------------------------------------------------------------- pretrained


def _hf_kwargs() -> dict[str, Any]:
    return {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "patch_size": 8,
        "image_size": 32,
    }


def test_timm_pretrained_file_and_directory(tmp_path: Path) -> None:
    import timm
    from safetensors.torch import save_file

    from mmpretrain.encoders.timm_encoder import timm_tokens

    torch.manual_seed(7)
    raw = timm.create_model("vit_tiny_patch16_224", num_classes=10, **TINY["timm"]["model_kwargs"]).eval()
    state = {k: v.contiguous() for k, v in raw.state_dict().items()}
    save_file(state, str(tmp_path / "vit.safetensors"))
    (tmp_path / "dir").mkdir()
    torch.save(state, tmp_path / "dir" / "pytorch_model.bin")
    from_file = build("timm", pretrained=str(tmp_path / "vit.safetensors"))
    from_dir = build("timm", seed=1, pretrained=str(tmp_path / "dir"))
    item = from_file.preprocess(segment(demo_image(40, 40)))
    with torch.no_grad():
        expected = timm_tokens(
            raw, from_file.processor.transform.normalize(item[None]), 1, keep_prefix=False, norm=False
        )
        torch.testing.assert_close(from_file(item[None], [])[0], expected)
        torch.testing.assert_close(from_dir(item[None], [])[0], expected)
    bad = {k: v for k, v in state.items() if not k.startswith("blocks.1.")}
    save_file(bad, str(tmp_path / "bad.safetensors"))
    with pytest.raises(UserError, match="do not match"):
        build("timm", pretrained=str(tmp_path / "bad.safetensors"))


def test_open_clip_pretrained_full_checkpoint_keeps_only_the_tower(tmp_path: Path) -> None:
    from mmpretrain.encoders.open_clip_encoder import build_tower, open_clip_tokens, resolve_open_clip

    torch.manual_seed(7)
    tower = build_tower(resolve_open_clip(tiny_config("open_clip"))).eval()
    full = {f"visual.{k}": v for k, v in tower.state_dict().items()}
    full["text_projection"] = torch.randn(32, 16)  # a text tower's tensors are ignored
    full["token_embedding.weight"] = torch.randn(100, 32)
    torch.save({"state_dict": full}, tmp_path / "clip.pt")
    encoder = build("open_clip", pretrained=str(tmp_path / "clip.pt"))
    assert not any("token_embedding" in n or "text" in n for n, _ in encoder.named_parameters())
    item = encoder.preprocess(segment(demo_image(40, 40)))
    with torch.no_grad():
        expected = open_clip_tokens(
            tower, encoder.processor.transform.normalize(item[None]), 1, keep_class=False, norm=False
        )
        torch.testing.assert_close(encoder(item[None], [])[0], expected)
    # a tower-only checkpoint (open_clip's directory layout) loads the same
    (tmp_path / "dir").mkdir()
    from safetensors.torch import save_file

    save_file(
        {k: v.contiguous() for k, v in tower.state_dict().items()},
        str(tmp_path / "dir" / "model.safetensors"),
    )
    again = build("open_clip", seed=1, pretrained=str(tmp_path / "dir"))
    with torch.no_grad():
        torch.testing.assert_close(again(item[None], [])[0], expected)


def test_hf_clip_pretrained_full_clip_directory(tmp_path: Path) -> None:
    import json

    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(7)
    text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    clip = CLIPModel(
        CLIPConfig(text_config={**text, "vocab_size": 64}, vision_config=_hf_kwargs(), projection_dim=16)
    ).eval()
    clip.save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": [0.1, 0.2, 0.3], "image_std": [0.5, 0.5, 0.5]})
    )
    encoder = build("hf_clip", pretrained=str(tmp_path), hidden_size=999, num_heads=1)  # arch fields ignored
    assert encoder.processor.transform.mean == (0.1, 0.2, 0.3)
    assert not any("text" in n for n, _ in encoder.named_parameters())
    item = encoder.preprocess(segment(demo_image(40, 40)))
    with torch.no_grad():
        pixels = encoder.processor.transform.normalize(item[None])
        hidden = clip.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
        torch.testing.assert_close(encoder(item[None], [])[0], hidden[:, 1:])
    with pytest.raises(ConfigError, match="hf_siglip"):
        build("hf_siglip", pretrained=str(tmp_path))


def test_hf_siglip_pretrained_round_trip(tmp_path: Path) -> None:
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(7)
    model = SiglipVisionModel(SiglipVisionConfig(**_hf_kwargs())).eval()
    model.save_pretrained(tmp_path)
    encoder = build("hf_siglip", pretrained=str(tmp_path))
    item = encoder.preprocess(segment(demo_image(40, 40)))
    with torch.no_grad():
        pixels = encoder.processor.transform.normalize(item[None])
        hidden = model(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
        torch.testing.assert_close(encoder(item[None], [])[0], hidden)


@pytest.mark.parametrize(
    ("name", "pretrained"),
    [
        ("timm", "timm/vit_tiny_patch16_224.augreg_in21k"),
        ("open_clip", "laion2b_s34b_b79k"),
        ("open_clip", "hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K"),
        ("hf_clip", "openai/clip-vit-base-patch32"),
        ("hf_siglip", "google/siglip-base-patch16-224"),
    ],
)
def test_hub_names_offline_give_a_clear_error(name: str, pretrained: str) -> None:
    with pytest.raises(UserError, match="local"):
        build(name, pretrained=pretrained)


@pytest.mark.parametrize("name", VISION)
def test_missing_local_path_is_a_config_error(name: str) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        build(name, pretrained="./no/such/weights")


def test_unknown_model_names_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="not a timm model"):
        build("timm", model="vit_nonexistent_patch3")
    with pytest.raises(ConfigError, match="not an open_clip model"):
        build("open_clip", model="ViT-Q-99")
    with pytest.raises(ConfigError, match="vision_cfg"):
        build("open_clip", vision_cfg={"width": 32, "depth": 2})


def test_hf_vision_final_norm_applies_post_layernorm() -> None:
    from mmpretrain.encoders.hf_vision import HFSiglipEncoderConfig
    from mmpretrain.registry import ENCODERS

    fields = {
        "name": "hf_siglip",
        "image_size": 32,
        "patch_size": 8,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_layers": 2,
        "num_heads": 2,
        "feature_layer": -1,
    }
    torch.manual_seed(0)
    plain = ENCODERS.build(HFSiglipEncoderConfig(**fields)).eval()
    torch.manual_seed(0)
    normed = ENCODERS.build(HFSiglipEncoderConfig(**fields, final_norm=True)).eval()
    pixels = torch.randn(1, 1, 3, 32, 32)
    with torch.no_grad():
        tokens, _ = plain(pixels[:, 0], [])
        normed_tokens, _ = normed(pixels[:, 0], [])
        expected = plain.post_layernorm(tokens)
    torch.testing.assert_close(normed_tokens, expected)
