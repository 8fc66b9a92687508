"""The distributed engines in one process (a 1-rank group of their own): same losses as
the plain loop, exact resume, async checkpoints, kernels under FSDP2, DeepSpeed's files,
and the config checks that run before any work."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from mmpretrain.cli import main
from mmpretrain.train.checkpoint import committed_checkpoints
from mmpretrain.train.metrics import read_metrics

from .dist_helpers import tiny_config

RTOL = 1e-5  # fp32: the engines sum the same numbers in another order
KERNELS = [{"match": "llm.*.mlp.*", "kind": "sparse24", "update_every": 2}]


def losses(run_dir: Path) -> list[float]:
    return [record["loss"] for record in read_metrics(run_dir)]


def train(config: Path, run_dir: Path, *extra: str) -> int:
    return main(["train", str(config), "--run-dir", str(run_dir), *extra])


@pytest.fixture(scope="module")
def reference(tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[float]]:
    """Loss curves of the plain loop (distributed.backend none), without and with kernels."""
    out = tmp_path_factory.mktemp("reference")
    curves = {}
    for name, model in (("plain", {}), ("kernels", {"kernels": KERNELS})):
        config = out / f"{name}.yaml"
        config.write_text(yaml.safe_dump(tiny_config(tokenizer_dir, train={"max_steps": 6}, model=model)))
        assert train(config, out / name) == 0
        curves[name] = losses(out / name)
    return curves


@pytest.mark.parametrize(
    "backend",
    [
        {"backend": "fsdp2"},
        {"backend": "ddp"},
        {"backend": "deepspeed"},
        {"backend": "deepspeed", "zero_stage": 3},
    ],
    ids=["fsdp2", "ddp", "zero2", "zero3"],
)
def test_engines_in_one_process_match_the_plain_loop(
    backend: dict[str, object],
    write_config: Callable[..., Path],
    reference: dict[str, list[float]],
    tmp_path: Path,
) -> None:
    config = write_config(train={"max_steps": 6, "save_every": 3}, distributed=backend)
    assert train(config, tmp_path / "run", "--set", "train.stop_after_steps=3") == 0
    assert train(config, tmp_path / "run", "--resume") == 0  # each engine reloads its own checkpoint
    assert losses(tmp_path / "run") == pytest.approx(reference["plain"], rel=RTOL)
    assert [p.name for p in committed_checkpoints(tmp_path / "run")] == ["step_0000003", "step_0000006"]


def test_fsdp2_stop_and_resume_is_bitwise_exact(write_config: Callable[..., Path], tmp_path: Path) -> None:
    config = write_config(train={"max_steps": 6, "save_every": 2}, distributed={"backend": "fsdp2"})
    assert train(config, tmp_path / "full") == 0
    assert train(config, tmp_path / "split", "--set", "train.stop_after_steps=3") == 0
    assert train(config, tmp_path / "split", "--resume") == 0
    assert losses(tmp_path / "split") == losses(tmp_path / "full")


def test_async_checkpoints_hold_the_same_tensors_as_sync_ones(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    from mmpretrain.export.gather import read_checkpoint_tensors

    for name, flag in (("sync", False), ("async", True)):
        config = write_config(
            f"{name}.yaml",
            train={"max_steps": 4, "save_every": 2},
            distributed={"backend": "fsdp2", "async_checkpoint": flag},
        )
        assert train(config, tmp_path / name) == 0
    sync, done = (committed_checkpoints(tmp_path / n) for n in ("sync", "async"))
    assert [p.name for p in done] == [p.name for p in sync] == ["step_0000002", "step_0000004"]
    for a, b in zip(sync, done, strict=True):
        left, right = read_checkpoint_tensors(a, ""), read_checkpoint_tensors(b, "")
        assert left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)


def test_kernel_layer_trains_under_fsdp2(
    write_config: Callable[..., Path], reference: dict[str, list[float]], tmp_path: Path
) -> None:
    """Swapped Linears shard like Linear; their masks come from the whole weight, so the
    curve is the plain loop's with the same kernels."""
    config = write_config(
        train={"max_steps": 6}, model={"kernels": KERNELS}, distributed={"backend": "fsdp2"}
    )
    assert train(config, tmp_path / "run") == 0
    assert losses(tmp_path / "run") == pytest.approx(reference["kernels"], rel=RTOL)
    assert losses(tmp_path / "run")[-1] < losses(tmp_path / "run")[0]


def test_deepspeed_checkpoints_hold_safetensors_weights_equal_to_its_own_files(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    from mmpretrain.export.gather import read_checkpoint_tensors
    from mmpretrain.train.checkpoint import DEEPSPEED_DIR, deepspeed_full_state_dict

    config = write_config(train={"max_steps": 2, "save_every": 2}, distributed={"backend": "deepspeed"})
    assert train(config, tmp_path / "run") == 0
    checkpoint = committed_checkpoints(tmp_path / "run")[-1]
    assert (checkpoint / DEEPSPEED_DIR).is_dir()
    converted = deepspeed_full_state_dict(tmp_path / "run")
    ours = read_checkpoint_tensors(checkpoint)
    assert converted.keys() == ours.keys() and all(torch.equal(converted[k], ours[k]) for k in ours)


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["distributed.backend=deepspeed", "train.nan_policy=skip"], "nan_policy=skip is not supported"),
        (["distributed.backend=fsdp2", "distributed.cpu_offload=true"], "leave it false"),
        (["model.llm.attn_implementation=flash_attention_2"], "needs a CUDA GPU and the flash-attn package"),
        (
            ["distributed.backend=deepspeed", "distributed.async_checkpoint=true"],
            "not supported with deepspeed",
        ),
    ],
)
def test_impossible_combinations_fail_before_any_work(
    sets: list[str],
    message: str,
    write_config: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if torch.cuda.is_available() and "cpu_offload" in sets[-1]:
        pytest.skip("cpu_offload is valid with a GPU")
    extra = [x for s in sets for x in ("--set", s)]
    assert train(write_config(), tmp_path / "run", *extra) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_nproc_needs_an_engine_and_torchrun_needs_one_too(
    write_config: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert train(write_config(), tmp_path / "run", "--nproc", "2") == 2
    assert "add --set distributed.backend=fsdp2" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it
    assert train(write_config(), tmp_path / "run") == 2
    assert "torchrun started 2 processes but distributed.backend is none" in capsys.readouterr().err


def test_sdpa_gets_the_block_mask_and_flash_attention_needs_its_package() -> None:
    from mmpretrain.data.packing import PackedDocument, build_text_batch
    from mmpretrain.model.packed import packed_attention_kwargs
    from mmpretrain.train.distributed import flash_attention_available

    batch = build_text_batch([[PackedDocument("a", [5, 6, 7]), PackedDocument("b", [8, 9])]], 6, 0)

    class Config:
        _attn_implementation = "sdpa"

    mask = packed_attention_kwargs(Config(), batch, torch.float32)["attention_mask"][0, 0]
    assert mask[3, 2] == torch.finfo(torch.float32).min and mask[4, 3] == 0  # b never sees a
    Config._attn_implementation = "flash_attention_2"
    assert "attention_mask" not in packed_attention_kwargs(
        Config(), batch, torch.float32
    )  # varlen from positions
    if not torch.cuda.is_available():
        assert not flash_attention_available()


@pytest.mark.gpu
def test_flash_attention_varlen_matches_sdpa_with_masks_on_gpu(tokenizer_dir: Path) -> None:
    """On a GPU with flash-attn: the varlen path gives the masked sdpa path's logits."""
    from mmpretrain.train.distributed import flash_attention_available

    if not flash_attention_available():
        pytest.skip("needs a CUDA GPU (sm80+) and the flash-attn package (pip install 'mmpretrain-lm[gpu]')")
    from mmpretrain.data.packing import PackedDocument, build_text_batch
    from mmpretrain.model.llms import LlamaLMConfig, build_causal_lm
    from mmpretrain.model.packed import packed_logits

    docs = [PackedDocument("a", list(range(3, 40))), PackedDocument("b", list(range(50, 77)))]
    batch = build_text_batch([docs], 64, 0).to("cuda")
    logits = {}
    for attention in ("sdpa", "flash_attention_2"):
        torch.manual_seed(0)
        cfg = LlamaLMConfig(
            name="llama",
            vocab_size=128,
            hidden_size=64,
            intermediate_size=128,
            num_layers=2,
            num_heads=4,
            num_kv_heads=2,
            attn_implementation=attention,
            dtype="bfloat16",
        )
        model = build_causal_lm(cfg).cuda()
        valid = batch.doc_ids[0] >= 0
        logits[attention] = packed_logits(model, batch)[0][valid].float()
    torch.testing.assert_close(logits["flash_attention_2"], logits["sdpa"], atol=2e-2, rtol=2e-2)


@pytest.fixture(scope="module")
def demo_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mmpretrain.data.demo_data import build_demo_dataset

    out = tmp_path_factory.mktemp("demo")
    build_demo_dataset(out, samples=60, shards=2, seed=0, progress=False)
    return out


def test_fsdp2_shards_encoders_and_connectors_of_a_multimodal_model(
    demo_shards: Path, tmp_path: Path
) -> None:
    """omni_tiny (an image tower, a speech encoder, two connectors, a Llama): every block,
    encoder and connector is its own FSDP2 unit, and training matches the plain loop."""
    from torch.distributed.fsdp import FSDPModule

    from mmpretrain.config import load_config
    from mmpretrain.run_config import RunConfig
    from mmpretrain.train.data_setup import tokenizer_for_run
    from mmpretrain.train.distributed import Engine, distributed_run, transformer_blocks
    from mmpretrain.train.loop import build_checked_model

    sets = [
        f'data.shards.reader.shards=["{demo_shards}/shard-*.tar"]',
        "train.batch_size=2",
        "train.seq_len=192",
        "train.log_every=1",
        "train.max_steps=4",
    ]
    curves = {}
    for backend in ("none", "fsdp2"):
        argv = ["train", "models/omni_tiny", "--run-dir", str(tmp_path / backend)]
        argv += [x for s in [*sets, f"distributed.backend={backend}"] for x in ("--set", s)]
        assert main(argv) == 0
        curves[backend] = losses(tmp_path / backend)
    assert curves["fsdp2"] == pytest.approx(curves["none"], rel=RTOL)

    cfg: RunConfig = load_config("models/omni_tiny", [*sets, "distributed.backend=fsdp2"])
    assert cfg.data is not None
    with distributed_run(cfg.distributed) as ctx:
        model = build_checked_model(cfg, tokenizer_for_run(cfg.data, tmp_path / "fsdp2"))
        Engine(ctx, cfg, model)
        units = [*transformer_blocks(model.llm), *model.encoders.values(), *model.connectors.values(), model]
        assert len(model.encoders) == 2 and len(model.connectors) == 2
        assert all(isinstance(unit, FSDPModule) for unit in units)


@pytest.mark.parametrize(
    "sections",
    [
        pytest.param({"model": {"activation_checkpointing": True}}, id="activation_checkpointing"),
        pytest.param({"train": {"max_steps": 6, "compile": True}}, id="compile", marks=pytest.mark.slow),
    ],
)
def test_activation_checkpointing_and_compile_before_sharding(
    sections: dict[str, dict[str, object]],
    write_config: Callable[..., Path],
    reference: dict[str, list[float]],
    tmp_path: Path,
) -> None:
    """build -> kernels -> activation checkpointing -> torch.compile (per block) -> fully_shard."""
    train_section = {"max_steps": 6, **sections.get("train", {})}
    model = sections.get("model", {})
    config = write_config(train=train_section, model=model, distributed={"backend": "fsdp2"})
    assert train(config, tmp_path / "run") == 0
    assert losses(tmp_path / "run") == pytest.approx(reference["plain"], rel=RTOL)
