"""Connectors: every registered one builds tiny, runs forward/backward, has an exact
``num_tokens``, ignores padding; ``mlp``, ``pixel_shuffle_mlp`` and ``linear`` load into
their transformers counterparts (Llava, Idefics3, Qwen2-Audio) with equal outputs."""

from __future__ import annotations

from typing import Annotated, Any

import pytest
import torch
from pydantic import TypeAdapter, ValidationError

from mmpretrain.config import ComponentConfig, FromRegistry
from mmpretrain.connectors.base import Connector, ConnectorConfig
from mmpretrain.connectors.pixel_shuffle import pixel_shuffle
from mmpretrain.errors import ConfigError
from mmpretrain.registry import CONNECTORS

IN_DIM, OUT_DIM = 24, 32

# tiny variant of each connector (key: test id) and input lengths valid for it
TINY: dict[str, dict[str, Any]] = {
    "linear": {"name": "linear"},
    "mlp": {"name": "mlp"},
    "pixel_shuffle_mlp": {"name": "pixel_shuffle_mlp", "scale_factor": 2},
    "pixel_shuffle_mlp_hidden": {
        "name": "pixel_shuffle_mlp",
        "scale_factor": 2,
        "hidden_layers": 1,
        "bias": True,
    },
    "pixel_shuffle_mlp_tiled": {"name": "pixel_shuffle_mlp", "scale_factor": 2, "tokens_per_tile": 16},
    "perceiver_resampler": {"name": "perceiver_resampler", "num_latents": 4, "depth": 2, "heads": 2},
    "perceiver_resampler_hidden": {
        "name": "perceiver_resampler",
        "num_latents": 3,
        "depth": 1,
        "heads": 2,
        "hidden_dim": 16,
    },
    "qformer": {"name": "qformer", "num_queries": 3, "depth": 2, "heads": 2},
    "conv_pool": {"name": "conv_pool", "output_grid": 2, "depth": 1, "hidden_dim": 8},
    "frame_stack_mlp": {"name": "frame_stack_mlp", "k": 3},
}
VALID_LENGTHS: dict[str, list[int]] = {
    "pixel_shuffle_mlp": [4, 16, 36, 64],
    "pixel_shuffle_mlp_hidden": [4, 16, 36],
    "pixel_shuffle_mlp_tiled": [16, 32, 48],
    "conv_pool": [1, 4, 9, 16, 25],
}
DEFAULT_LENGTHS = [1, 2, 3, 5, 7, 12]

connector_union: TypeAdapter[Any] = TypeAdapter(Annotated[ComponentConfig, FromRegistry("connectors")])


def make_config(key: str) -> ConnectorConfig:
    """The tiny config, validated through the registry's discriminated union (as YAML is)."""
    config = connector_union.validate_python(TINY[key])
    assert isinstance(config, ConnectorConfig)
    return config


def build(key: str) -> Connector:
    connector = CONNECTORS.build(make_config(key), in_dim=IN_DIM, out_dim=OUT_DIM)
    assert isinstance(connector, Connector)
    return connector


def batch(lengths: list[int], t: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    t = max(lengths) if t is None else t
    return torch.randn(len(lengths), t, IN_DIM), torch.tensor(lengths)


def test_every_builtin_connector_has_a_tiny_variant() -> None:
    builtin = {e.name for e in CONNECTORS.entries() if e.origin.startswith("mmpretrain.connectors")}
    expected = {
        "linear",
        "mlp",
        "pixel_shuffle_mlp",
        "perceiver_resampler",
        "qformer",
        "conv_pool",
        "frame_stack_mlp",
    }
    assert builtin == expected
    assert builtin <= {cfg["name"] for cfg in TINY.values()}
    for entry in CONNECTORS.entries():
        if entry.name in builtin:
            assert entry.config_class is not None and entry.summary


@pytest.mark.parametrize("key", TINY)
def test_forward_backward_and_lengths(key: str) -> None:
    connector = build(key)
    lengths = VALID_LENGTHS.get(key, DEFAULT_LENGTHS)[:3]
    features, lengths_t = batch(lengths)
    features.requires_grad_(True)
    out, out_lengths = connector(features, lengths_t)
    assert out.shape[0] == len(lengths) and out.shape[2] == OUT_DIM
    assert out_lengths.tolist() == [connector.num_tokens(n) for n in lengths]
    assert out.shape[1] >= max(out_lengths.tolist())
    assert torch.isfinite(out).all()
    valid = torch.arange(out.shape[1]) < out_lengths[:, None]
    (out * valid[..., None]).square().sum().backward()
    for name, param in connector.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0, name
    assert features.grad is not None and features.grad.abs().sum() > 0


@pytest.mark.parametrize("key", TINY)
def test_num_tokens_equals_output_length(key: str) -> None:
    connector = build(key).eval()
    for n in VALID_LENGTHS.get(key, DEFAULT_LENGTHS):
        out, out_lengths = connector(*batch([n]))
        assert out_lengths.tolist() == [connector.num_tokens(n)] == [connector.config.num_tokens(n)]
        assert out.shape[1] == connector.num_tokens(n), (key, n)


@pytest.mark.parametrize("key", TINY)
def test_padding_does_not_change_valid_outputs(key: str) -> None:
    connector = build(key).eval()
    lengths = VALID_LENGTHS.get(key, DEFAULT_LENGTHS)[:3]
    tile = TINY[key].get("tokens_per_tile")
    t = max(lengths) + (tile or 5)  # padding past the longest row too
    features, lengths_t = batch(lengths, t)
    padding = torch.arange(t) >= lengths_t[:, None]
    with torch.no_grad():
        out, out_lengths = connector(features, lengths_t)
        for fill in (1e3 * torch.randn_like(features), torch.full_like(features, float("nan"))):
            perturbed = torch.where(padding[..., None], fill, features)
            out2, out_lengths2 = connector(perturbed, lengths_t)
            assert torch.equal(out_lengths, out_lengths2)
            for row, n in enumerate(out_lengths.tolist()):
                torch.testing.assert_close(out2[row, :n], out[row, :n], rtol=1e-5, atol=1e-5)
        # and each row's valid output equals that row alone, unpadded
        for row, n in enumerate(lengths):
            alone, _ = connector(features[row : row + 1, :n], lengths_t[row : row + 1])
            m = out_lengths[row]
            torch.testing.assert_close(out[row, :m], alone[0, :m], rtol=1e-5, atol=1e-5)


NO_MEDIA_KEYS = ["linear", "mlp", "perceiver_resampler", "qformer", "conv_pool", "frame_stack_mlp"]


@pytest.mark.parametrize("key", NO_MEDIA_KEYS)
def test_row_without_media_gives_zero_tokens(key: str) -> None:
    connector = build(key)
    first = VALID_LENGTHS.get(key, DEFAULT_LENGTHS)[1]
    out, out_lengths = connector(*batch([first, 0]))
    assert out_lengths.tolist() == [connector.num_tokens(first), 0]
    assert connector.num_tokens(0) == 0
    assert torch.isfinite(out).all()


def test_pixel_shuffle_order_and_mixed_grids() -> None:
    connector = build("pixel_shuffle_mlp")
    assert [connector.num_tokens(n) for n in (4, 16, 64, 576)] == [1, 4, 16, 144]
    # element order: for output token (i, j), rows of the 2x2 block, then columns, then channels
    grid = torch.arange(16.0).reshape(1, 16, 1)
    expected = [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]
    assert pixel_shuffle(grid, 2)[0].tolist() == expected


def test_frame_stack_zero_pads_the_last_group() -> None:
    connector = build("frame_stack_mlp")
    assert [connector.num_tokens(n) for n in (0, 1, 3, 4, 6, 7)] == [0, 1, 1, 2, 2, 3]
    features, lengths = batch([4], t=6)
    zeroed = features.clone()
    zeroed[:, 4:] = 0
    stacked = zeroed.reshape(1, 2, 3 * IN_DIM)
    expected = connector.linear_2(connector.act(connector.linear_1(stacked)))
    out, out_lengths = connector(features, lengths)
    assert out_lengths.tolist() == [2]
    torch.testing.assert_close(out, expected)


def test_init_is_deterministic() -> None:
    for key in TINY:
        torch.manual_seed(3)
        first = build(key).state_dict()
        torch.manual_seed(3)
        second = build(key).state_dict()
        assert all(torch.equal(first[k], second[k]) for k in first), key


# ------------------------------------------------------------------ transformers compatibility


def test_mlp_matches_llava_projector() -> None:
    from transformers import LlavaConfig
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    hf_config = LlavaConfig(
        vision_config={"model_type": "clip_vision_model", "hidden_size": IN_DIM},
        text_config={"model_type": "llama", "hidden_size": OUT_DIM},
    )
    reference = LlavaMultiModalProjector(hf_config)
    ours = build("mlp")
    shapes = {k: v.shape for k, v in ours.state_dict().items()}
    assert shapes == {k: v.shape for k, v in reference.state_dict().items()}
    assert set(shapes) == {"linear_1.weight", "linear_1.bias", "linear_2.weight", "linear_2.bias"}
    reference.load_state_dict(ours.state_dict(), strict=True)
    features, lengths = batch([9, 9])
    torch.testing.assert_close(ours(features, lengths)[0], reference(features))


@pytest.mark.parametrize("grid", [16, 64])
def test_pixel_shuffle_matches_idefics3_connector(grid: int) -> None:
    from transformers import Idefics3Config
    from transformers.models.idefics3.modeling_idefics3 import Idefics3Connector

    hf_config = Idefics3Config(
        vision_config={"hidden_size": IN_DIM},
        text_config={"model_type": "llama", "hidden_size": OUT_DIM},
        scale_factor=2,
    )
    reference = Idefics3Connector(hf_config)
    ours = build("pixel_shuffle_mlp")
    assert list(ours.state_dict()) == list(reference.state_dict()) == ["modality_projection.proj.weight"]
    reference.load_state_dict(ours.state_dict(), strict=True)
    features, lengths = batch([grid, grid])
    out, out_lengths = ours(features, lengths)
    assert out_lengths.tolist() == [grid // 4] * 2
    torch.testing.assert_close(out, reference(features))


def test_linear_matches_qwen2_audio_projector() -> None:
    from transformers import Qwen2AudioConfig
    from transformers.models.qwen2_audio.modeling_qwen2_audio import Qwen2AudioMultiModalProjector

    hf_config = Qwen2AudioConfig(audio_config={"d_model": IN_DIM}, text_config={"hidden_size": OUT_DIM})
    reference = Qwen2AudioMultiModalProjector(hf_config)
    ours = build("linear")
    reference.load_state_dict(ours.state_dict(), strict=True)
    features, lengths = batch([5, 5])
    torch.testing.assert_close(ours(features, lengths)[0], reference(features))


# ------------------------------------------------------------------ clear errors


@pytest.mark.parametrize("n", [15, 8, 9, 50])
def test_pixel_shuffle_rejects_non_square_or_indivisible_grids(n: int) -> None:
    connector = build("pixel_shuffle_mlp")
    with pytest.raises(ConfigError, match=rf"{n} input tokens do not form a square grid.*divisible by 2"):
        connector.num_tokens(n)
    with pytest.raises(ConfigError, match=rf"{n} input tokens"):
        connector(*batch([n]))


def test_conv_pool_rejects_non_square_lengths() -> None:
    connector = build("conv_pool")
    with pytest.raises(ConfigError, match="10 input tokens do not form a square grid"):
        connector.num_tokens(10)
    with pytest.raises(ConfigError, match="10 input tokens"):
        connector(*batch([16, 10]))


def test_tiled_pixel_shuffle_rejects_partial_tiles() -> None:
    connector = build("pixel_shuffle_mlp_tiled")
    with pytest.raises(ConfigError, match="20 input tokens are not a whole number of tiles"):
        connector.num_tokens(20)
    with pytest.raises(ConfigError, match=r"lengths \[20\] are not whole tiles"):
        connector(*batch([20], t=32))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": "frame_stack_mlp", "k": 0}, "k"),
        ({"name": "pixel_shuffle_mlp", "scale_factor": 0}, "scale_factor"),
        ({"name": "pixel_shuffle_mlp", "tokens_per_tile": 15}, "15 tokens_per_tile do not form a square"),
        ({"name": "pixel_shuffle_mlp", "hidden_dim": 8}, "hidden_dim is only used with hidden_layers >= 1"),
        ({"name": "perceiver_resampler", "num_latents": 0}, "num_latents"),
        ({"name": "qformer", "bogus": 1}, "bogus"),
        ({"name": "conv_pool", "output_grid": 0}, "output_grid"),
    ],
)
def test_invalid_configs_are_rejected(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        connector_union.validate_python(fields)


def test_heads_must_divide_the_width() -> None:
    config = connector_union.validate_python({"name": "qformer", "heads": 5})
    with pytest.raises(ConfigError, match=r"width 24 .* not divisible by heads=5"):
        CONNECTORS.build(config, in_dim=IN_DIM, out_dim=OUT_DIM)


def test_negative_length_is_rejected() -> None:
    with pytest.raises(ConfigError, match="must be >= 0"):
        make_config("linear").num_tokens(-1)
