"""The native format (`--to safetensors`): exact round trip (kernel state included), sharded
weights with an index, dtype choice, the model card, corrupted exports named by file and
tensor, and full tensors gathered from FSDP2-sharded DCP checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from export_helpers import image_item, llava_config, our_batch, our_logits, picture, write_run_dir

from mmpretrain.data.tokenizer import TextTokenizer
from mmpretrain.errors import UserError
from mmpretrain.export import export_checkpoint
from mmpretrain.model.multimodal import MultimodalLM

KERNELS = (
    'model.kernels=[{"match": "llm.*.mlp.*", "kind": "sparse24"}, '
    '{"match": "connectors.*", "kind": "bitnet", "transition_steps": 10}]'
)


@pytest.fixture
def vlm_run(tmp_path: Path, tokenizer_dir: Path) -> tuple[Path, MultimodalLM]:
    model, _ = write_run_dir(tmp_path / "run", "models/vlm_tiny", [KERNELS], tokenizer_dir)
    from mmpretrain.kernels import kernel_modules

    assert {str(m.kind) for _, m in kernel_modules(model)} == {"sparse24", "bitnet"}
    return tmp_path / "run", model


def test_native_round_trip_is_exact(
    vlm_run: tuple[Path, MultimodalLM], tokenizer: TextTokenizer, tmp_path: Path
) -> None:
    run_dir, model = vlm_run
    (run_dir / "eval").mkdir()
    entry = {"task": "shapes_count", "shots": 4, "metric": "vqa_accuracy", "score": 0.25, "n": 8, "step": 3}
    (run_dir / "eval" / "results.json").write_text(json.dumps([entry]))
    out = tmp_path / "native"
    result = export_checkpoint(run_dir, "safetensors", out, max_shard_size="150KB")
    assert result.model_class == "MultimodalLM" and "float32" in result.summary
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert {"model_config.yaml", "config.yaml", "README.md", "export.json"} <= {p.name for p in out.iterdir()}
    assert (out / "tokenizer" / "tokenizer.json").is_file()
    loaded = MultimodalLM.from_pretrained(str(out)).eval()
    ours, back = model.state_dict(), loaded.state_dict()
    assert set(ours) == set(back)  # kernel buffers (2:4 masks, BitNet's lam) included
    assert all(torch.equal(ours[n], back[n]) for n in ours)
    cfg = llava_config()
    batch = our_batch(tokenizer, ["a ", image_item(cfg, picture()), " b"])
    torch.testing.assert_close(our_logits(loaded, batch), our_logits(model, batch), atol=0, rtol=0)
    card = (out / "README.md").read_text()
    for text in (
        "`hf_siglip`",
        "`mlp`",
        "sparse24",
        "bitnet",
        "- steps: 3 of 100",
        "- tokens: 3,702",
        "| demo | 3,702 |",
    ):
        assert text in card, text
    assert "| shapes_count | 4 | vqa_accuracy | 0.2500 | 3 | results.json |" in card
    assert json.loads((out / "export.json").read_text())["source"]["step"] == 3


def test_dtype_casts_parameters_not_kernel_state(vlm_run: tuple[Path, MultimodalLM], tmp_path: Path) -> None:
    from safetensors.torch import load_file

    run_dir, model = vlm_run
    out = tmp_path / "bf16"
    result = export_checkpoint(run_dir, "safetensors", out, dtype="bfloat16")
    assert "bfloat16" in result.summary
    stored = load_file(str(out / "model.safetensors"))
    assert stored["llm.model.embed_tokens.weight"].dtype == torch.bfloat16
    lam = next(n for n in stored if n.endswith(".lam"))
    assert stored[lam].dtype == torch.float32
    loaded = MultimodalLM.from_pretrained(str(out))
    weight = model.state_dict()["llm.model.embed_tokens.weight"]
    assert torch.equal(
        loaded.state_dict()["llm.model.embed_tokens.weight"], weight.to(torch.bfloat16).float()
    )


def test_corrupted_native_export_names_file_and_tensor(
    vlm_run: tuple[Path, MultimodalLM], tmp_path: Path
) -> None:
    from safetensors.torch import load_file, save_file

    run_dir, _ = vlm_run
    out = tmp_path / "native"
    export_checkpoint(run_dir, "safetensors", out, max_shard_size="150KB")
    weight_map = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    name = "connectors.image.linear_2.weight"
    shard = out / weight_map[name]
    tensors = load_file(str(shard))
    tensors[name] = tensors[name][:-1].contiguous()
    save_file(tensors, str(shard))
    with pytest.raises(
        UserError, match=rf"{shard}: tensor '{name}' has shape \[63, 64\] but the model needs \[64, 64\]"
    ):
        MultimodalLM.from_pretrained(str(out))
    shard.unlink()
    with pytest.raises(UserError, match=rf"{shard} is missing: model.safetensors.index.json lists it"):
        MultimodalLM.from_pretrained(str(out))


def test_incomplete_checkpoint_is_named(vlm_run: tuple[Path, MultimodalLM], tmp_path: Path) -> None:
    run_dir, _ = vlm_run
    tensors = run_dir / "checkpoints" / "step_0000003" / "tensors"
    for file in tensors.glob("*.safetensors"):
        file.unlink()
    with pytest.raises(UserError, match="holds no safetensors files"):
        export_checkpoint(run_dir, "safetensors", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_fsdp2_sharded_checkpoint_is_gathered(tmp_path: Path) -> None:
    """Two gloo ranks save an FSDP2-sharded checkpoint (per-rank safetensors, no index);
    the export reads it in one process as the full tensors (about 30 s: two processes start)."""
    import torch.multiprocessing as mp

    from mmpretrain.export.gather import read_checkpoint_tensors

    mp.spawn(_save_sharded, args=(2, str(tmp_path)), nprocs=2)
    assert len(list((tmp_path / "step" / "tensors").glob("*.safetensors"))) == 2
    gathered = read_checkpoint_tensors(tmp_path / "step")
    full = torch.load(tmp_path / "full.pt", weights_only=True)
    assert set(gathered) == set(full)
    assert all(torch.equal(gathered[n], full[n]) for n in full)


def _save_sharded(rank: int, world: int, out: str) -> None:
    import os

    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageWriter
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from mmpretrain.config import load_config
    from mmpretrain.model.build import build_model

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(29500 + os.getppid() % 1000))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = build_model(load_config("models/vlm_tiny").model)
        if rank == 0:
            torch.save({k: v.clone() for k, v in model.state_dict().items()}, f"{out}/full.pt")
        mesh = init_device_mesh("cpu", (world,))
        for layer in model.llm.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        state = {f"model.{k}": v for k, v in get_model_state_dict(model).items()}
        writer = HuggingFaceStorageWriter(f"{out}/step/tensors", save_distributed=True)
        dcp.save(state, storage_writer=writer)
    finally:
        dist.destroy_process_group()
