"""Kernel rules: glob matching, exclude, first match wins, dense defaults, the table, listing."""

from __future__ import annotations

import pytest
from torch import nn

from mmpretrain.config import validate_config
from mmpretrain.errors import ConfigError
from mmpretrain.kernels import KernelRule, apply_kernels, format_kernel_table, kernel_rows
from mmpretrain.kernels.rules import first_rule, is_dense_by_default
from mmpretrain.listing import format_listing
from mmpretrain.registry import KERNELS


def toy_lm(layers: int = 3) -> nn.Module:
    """Module names shaped like a transformers Llama inside MultimodalLM."""
    root = nn.Module()
    llm = nn.Module()
    llm.model = nn.Module()
    llm.model.embed_tokens = nn.Embedding(10, 8)
    blocks = nn.ModuleList()
    for _ in range(layers):
        block = nn.Module()
        block.self_attn = nn.ModuleDict(
            {n: nn.Linear(8, 8) for n in ("q_proj", "k_proj", "v_proj", "o_proj")}
        )
        block.mlp = nn.ModuleDict({n: nn.Linear(8, 16) for n in ("gate_proj", "up_proj")})
        block.mlp["down_proj"] = nn.Linear(16, 8)
        blocks.append(block)
    llm.model.layers = blocks
    llm.lm_head = nn.Linear(8, 10)
    root.llm = llm
    root.connectors = nn.ModuleDict({"image": nn.Sequential(nn.Linear(12, 8), nn.GELU(), nn.Linear(8, 8))})
    root.encoders = nn.ModuleDict({"vision": nn.MultiheadAttention(8, 2)})
    return root


def kinds(model: nn.Module) -> dict[str, str]:
    return {row.fqn: row.kind for row in kernel_rows(model)}


def test_shorthand_and_explicit_forms_are_the_same_rule() -> None:
    short = KernelRule.model_validate({"match": "llm.*.mlp.*", "kind": "sparse24", "update_every": 5})
    explicit = KernelRule.model_validate(
        {"match": ["llm.*.mlp.*"], "kernel": {"name": "sparse24", "update_every": 5}}
    )
    assert short == explicit
    assert short.kernel.update_every == 5  # type: ignore[attr-defined]
    # the resolved (dumped) form loads back to the same rule
    assert KernelRule.model_validate(short.model_dump(mode="json")) == short


@pytest.mark.parametrize(
    ("rule", "match"),
    [
        ({"match": "llm.*", "kind": "nope"}, "nope"),
        ({"match": "llm.*", "kind": "sparse24", "bogus": 1}, "bogus"),
        ({"match": "llm.*", "kind": "unstructured", "sparsity": 1.5}, "sparsity"),
        ({"match": "llm.*", "kind": "sparse24", "kernel": {"name": "sparse24"}}, "not both"),
        ({"match": [], "kind": "sparse24"}, "at least one glob"),
    ],
)
def test_bad_rules_fail_naming_the_key(rule: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        validate_config(KernelRule, rule, "kernels[0]")


def test_first_match_wins_and_exclude_falls_through() -> None:
    model = toy_lm()
    rows = apply_kernels(
        model,
        [
            {"match": "llm.*.mlp.*", "exclude": ["*.down_proj"], "kind": "sparse24"},
            {"match": ["llm.*.mlp.down_proj", "llm.*.self_attn.q_proj"], "kind": "unstructured"},
            {"match": "llm.*", "kind": "bitnet"},  # everything left in the LLM
        ],
    )
    got = kinds(model)
    assert got["llm.model.layers.0.mlp.gate_proj"] == "sparse24"
    assert got["llm.model.layers.2.mlp.up_proj"] == "sparse24"
    assert got["llm.model.layers.1.mlp.down_proj"] == "unstructured"
    assert got["llm.model.layers.1.self_attn.q_proj"] == "unstructured"
    assert got["llm.model.layers.0.self_attn.o_proj"] == "bitnet"
    assert "llm.lm_head" not in got  # dense by default, though `llm.*` covers it
    assert not any(name.startswith("connectors") for name in got)
    assert len(rows) == 3 * 7
    assert [r.fqn for r in rows] == list(got)


def test_lm_head_and_embeddings_dense_unless_the_rule_says_otherwise() -> None:
    assert is_dense_by_default("llm.lm_head")
    assert is_dense_by_default("encoders.vision.model.embeddings.patch_embedding")
    assert not is_dense_by_default("llm.model.layers.0.mlp.up_proj")
    model = toy_lm(1)
    apply_kernels(model, [{"match": "*", "kind": "bitnet", "keep_output_dense": False}])
    assert kinds(model)["llm.lm_head"] == "bitnet"


def test_multihead_attention_projections_are_never_swapped() -> None:
    model = toy_lm(1)
    apply_kernels(model, [{"match": ["encoders.*", "connectors.*"], "kind": "bitnet"}])
    assert sorted(kinds(model)) == ["connectors.image.0", "connectors.image.2"]
    assert isinstance(model.encoders.vision.out_proj, nn.Linear)


def test_a_rule_that_matches_nothing_warns_but_works() -> None:
    model = toy_lm(1)
    with pytest.warns(UserWarning, match=r"encoders\.\*\.fc -> sparse24 matched no Linear"):
        rows = apply_kernels(
            model,
            [{"match": "encoders.*.fc", "kind": "sparse24"}, {"match": "llm.*.mlp.*", "kind": "bitnet"}],
        )
    assert {r.kind for r in rows} == {"bitnet"}
    assert apply_kernels(toy_lm(1), []) == []


def test_first_rule_index() -> None:
    rules = [
        KernelRule.model_validate({"match": "a.*", "exclude": "a.x", "kind": "bitnet"}),
        KernelRule.model_validate({"match": "a.x", "kind": "bitnet"}),
    ]
    assert first_rule(rules, "a.y") == 0
    assert first_rule(rules, "a.x") == 1
    assert first_rule(rules, "b.y") is None


def test_table_groups_layers_and_names_backends() -> None:
    model = toy_lm(4)
    rows = apply_kernels(
        model,
        [{"match": "llm.*.mlp.*", "kind": "sparse24"}, {"match": "connectors.*", "kind": "bitnet"}],
    )
    table = format_kernel_table(rows)
    lines = table.splitlines()
    assert lines[0].split() == ["kernels:", "module", "kind", "backend", "weight", "count", "settings"]
    gate = next(line for line in lines if "gate_proj" in line)
    assert gate.split()[:2] == ["llm.model.layers.{0-3}.mlp.gate_proj", "sparse24"]
    assert "emulate (reference numerics)" in gate and "16x8" in gate
    assert gate.split()[6:] == ["4", "sr_ste,", "mask", "every", "1", "steps"]
    assert "connectors.image.0 " in table and "connectors.image.2 " in table  # other shapes
    assert "14 Linear modules swapped (bitnet: 2, sparse24: 12)" in lines[-1]
    assert format_kernel_table([]) == "kernels: none (every Linear is dense)"


def test_list_kernels_shows_every_kind_with_backends() -> None:
    text = format_listing("kernels")
    for name in ("sparse24", "unstructured", "bitnet"):
        assert name in KERNELS
    for entry in KERNELS.entries():
        line = next(line for line in text.splitlines() if line.split()[:1] == [entry.name])
        backends = entry.builder.backends
        assert f"[{', '.join(backends)}]" in line
    assert "[emulate, cuda]" in next(line for line in text.splitlines() if "sparse24" in line)
