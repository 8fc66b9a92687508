"""Distributed benchmark: CPU throughput at 1 and 2 processes, checkpoint cost vs model size.

1. Throughput. ``mmpt train tiny`` (the 2.4M-parameter Llama on Shakespeare; 8, quick 4,
   256-token rows per optimizer step; fp32) for ``--steps`` steps, in fresh processes:
   1 process with 1 thread (``distributed.backend: none``) and, not with --quick, with
   all threads and as a 1-rank ``fsdp2`` group; 2 processes under torchrun with ``fsdp2``
   and ``ddp`` (1 thread each, half the rows per rank: the same global batch). tokens/s is
   the median of the per-step figures after ``--warmup`` steps, and the best step's; the
   scaling ratios use the best steps (the least disturbed by other work on a shared
   machine). On a 2-core machine 2 processes can at best double the 1-thread figure and
   compete with the 2-thread single process for the same cores: the figures say what
   scaling costs here, not what a GPU node does.
2. Checkpoints. Llamas of growing width (model + AdamW state after one step): seconds to
   save synchronously, to return from an async save (``distributed.async_checkpoint``:
   tensors staged in memory, written by a background thread) and to finish it, to load,
   and the bytes on disk; then the largest one saved sharded by 2 ranks (torchrun, FSDP2)
   and loaded back at 1 rank (resharding). Timings are the best of 2 (quick) or 3 repeats.

    python scripts/bench_dist.py --quick     # about 2-3 minutes on 2 cores
    python scripts/bench_dist.py             # more steps, larger models

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

warnings.filterwarnings("ignore", message="torch.distributed is disabled")  # single-process DCP: intended


def tokenizer(work: Path) -> Path:
    """A 2,000-token BPE tokenizer on the first Shakespeare documents (as tiny trains one)."""
    from mmpretrain.data.skips import SkipCounter
    from mmpretrain.data.text_sources import ShakespeareSource, iter_documents
    from mmpretrain.data.tokenizer import train_bpe

    out = work / "tokenizer"
    if not (out / "tokenizer.json").is_file():
        docs = iter_documents(ShakespeareSource(split="train"), SkipCounter(max_skips=0, name="shakespeare"))
        train_bpe((d.text for d in itertools.islice(docs, 600)), vocab_size=2000).save(out)
    return out


def throughput_run(
    work: Path, name: str, backend: str, nproc: int, threads: int, steps: int, warmup: int, rows: int
) -> dict[str, Any]:
    """tokens/s of one `mmpt train tiny` run in fresh processes (``rows`` per step in all)."""
    from mmpretrain.train.metrics import read_metrics

    run_dir = work / name
    shutil.rmtree(run_dir, ignore_errors=True)
    sets = [f"train.max_steps={steps}", "train.log_every=1", f"train.save_every={10 * steps}"]
    sets += ["train.precision=fp32", f"data.tokenizer.path={tokenizer(work)}"]
    sets += [f"train.batch_size={rows // nproc}", f"distributed.backend={backend}"]
    args = ["train", "tiny", "--run-dir", str(run_dir), *[x for s in sets for x in ("--set", s)]]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if nproc == 1:
        command = [sys.executable, "-m", "mmpretrain.cli", *args]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
        command += ["-m", "mmpretrain.cli", *args]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    rates = [r["tokens_per_s"] for r in read_metrics(run_dir) if r["step"] > warmup]
    return {
        "backend": backend,
        "processes": nproc,
        "threads_each": threads,
        "tokens_per_s": round(statistics.median(rates)),
        "best_step_tokens_per_s": round(max(rates)),
        "wall_s": round(wall, 1),
    }


def throughput(work: Path, steps: int, warmup: int, rows: int, quick: bool) -> dict[str, Any]:
    cores = os.cpu_count() or 1
    plan = [  # name, backend, processes, threads each
        ("1proc_1thread", "none", 1, 1),
        ("1proc_all_threads", "none", 1, cores),
        ("1proc_fsdp2", "fsdp2", 1, 1),
        ("2proc_fsdp2", "fsdp2", 2, 1),
        ("2proc_ddp", "ddp", 2, 1),
    ]
    if quick:  # the comparisons that matter most, in about half the time
        plan = [run for run in plan if run[0] not in ("1proc_fsdp2", "1proc_all_threads")]
    runs = {}
    for name, backend, nproc, threads in plan:
        runs[name] = throughput_run(work, name, backend, nproc, threads, steps, warmup, rows)
        print(f"throughput {name}: {runs[name]}", flush=True)

    def ratio(name: str, base: str) -> float:  # from the best steps: the least disturbed by other load
        return round(runs[name]["best_step_tokens_per_s"] / runs[base]["best_step_tokens_per_s"], 2)

    return {
        "rows_per_step": rows,
        "seq_len": 256,
        "runs": runs,
        "scaling_2proc_fsdp2_vs_1proc_1thread": ratio("2proc_fsdp2", "1proc_1thread"),
        "scaling_2proc_ddp_vs_1proc_1thread": ratio("2proc_ddp", "1proc_1thread"),
        **(
            {}
            if quick
            else {
                "scaling_2proc_fsdp2_vs_1proc_all_threads": ratio("2proc_fsdp2", "1proc_all_threads"),
                "fsdp2_1proc_vs_none_1proc": ratio("1proc_fsdp2", "1proc_1thread"),
            }
        ),
    }


# ---------------------------------------------------------------------------- checkpoints


def llama(hidden: int) -> Any:
    """A 4-layer Llama of width ``hidden`` (vocabulary 8192) as a MultimodalLM."""
    from mmpretrain.model.build import build_model
    from mmpretrain.model.config import ModelConfig

    cfg = ModelConfig.model_validate(
        {
            "llm": {
                "name": "llama",
                "vocab_size": 8192,
                "hidden_size": hidden,
                "intermediate_size": int(hidden * 8 / 3) // 64 * 64 or 64,
                "num_layers": 4,
                "num_heads": max(hidden // 64, 1),
                "num_kv_heads": max(hidden // 64, 1),
            }
        }
    )
    return build_model(cfg)


def stepped(hidden: int) -> tuple[Any, torch.optim.Optimizer]:
    """Model and AdamW with state (one step on random tokens)."""
    from mmpretrain.train.config import OptimConfig
    from mmpretrain.train.optim import build_optimizer

    torch.manual_seed(0)
    model = llama(hidden)
    optimizer = build_optimizer(model, OptimConfig())
    ids = torch.randint(0, 8192, (2, 64))
    model.llm(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return model, optimizer


def directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def checkpoint_costs(work: Path, widths: list[int], repeats: int) -> list[dict[str, Any]]:
    """Per width: the best of ``repeats`` timings (a shared machine's slow spells removed)."""
    from mmpretrain.train.checkpoint import Checkpointer, load_checkpoint

    rows = []
    for hidden in widths:
        model, optimizer = stepped(hidden)
        fresh, fresh_optimizer = stepped(hidden)
        params = sum(p.numel() for p in model.parameters())
        row: dict[str, Any] = {"hidden": hidden, "parameters": params}
        timings: dict[str, list[float]] = {}
        for _, mode in itertools.product(range(repeats), ("sync", "async")):
            run_dir = work / f"ckpt_{hidden}_{mode}"
            shutil.rmtree(run_dir, ignore_errors=True)
            saver = Checkpointer(run_dir, keep_last=1, async_save=mode == "async")
            start = time.perf_counter()
            path = saver.save(1, model, optimizer, {"data": None})
            returned = time.perf_counter() - start
            saver.wait()
            finished = time.perf_counter() - start
            if mode == "sync":
                timings.setdefault("save_s", []).append(finished)
                row["bytes"] = directory_bytes(path / "tensors")
                start = time.perf_counter()
                load_checkpoint(path, fresh, fresh_optimizer)
                timings.setdefault("load_s", []).append(time.perf_counter() - start)
            else:
                timings.setdefault("async_blocking_s", []).append(returned)
                timings.setdefault("async_total_s", []).append(finished)
        row.update({key: round(min(values), 3) for key, values in timings.items()})
        row["mib"] = round(row["bytes"] / 2**20, 1)
        row["bytes_per_parameter"] = round(row["bytes"] / params, 2)
        print(f"checkpoint {row}", flush=True)
        rows.append(row)
    return rows


def sharded_worker(work: Path, hidden: int) -> None:
    """Under torchrun: FSDP2-shard the model, save sharded (timed), load back (timed)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from mmpretrain.train.checkpoint import Checkpointer, load_checkpoint
    from mmpretrain.train.config import OptimConfig
    from mmpretrain.train.distributed import transformer_blocks
    from mmpretrain.train.optim import build_optimizer

    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    torch.manual_seed(0)
    model = llama(hidden)
    for block in transformer_blocks(model.llm):
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    optimizer = build_optimizer(model, OptimConfig())
    ids = torch.randint(0, 8192, (2, 64))
    model(_batch(ids)).sum().backward()
    optimizer.step()
    run_dir = work / "sharded"
    dist.barrier()
    start = time.perf_counter()
    path = Checkpointer(run_dir, keep_last=1).save(1, model, optimizer, {"data": None})
    save_s = time.perf_counter() - start
    start = time.perf_counter()
    load_checkpoint(path, model, optimizer)
    load_s = time.perf_counter() - start
    if dist.get_rank() == 0:
        (work / "sharded.json").write_text(json.dumps({"save_s": save_s, "load_s": load_s}))
    dist.destroy_process_group()


def _batch(ids: torch.Tensor) -> Any:
    from mmpretrain.data.packing import PackedDocument, build_text_batch

    return build_text_batch(
        [[PackedDocument(str(i), row.tolist())] for i, row in enumerate(ids)], ids.shape[1], 0
    )


def sharded_costs(work: Path, hidden: int) -> dict[str, Any]:
    from mmpretrain.train.checkpoint import latest_checkpoint, load_checkpoint

    shutil.rmtree(work / "sharded", ignore_errors=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    command += [__file__, "--sharded-worker", str(work), "--hidden", str(hidden)]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode != 0:
        raise SystemExit(f"sharded save failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    timings = json.loads((work / "sharded.json").read_text())
    path = latest_checkpoint(work / "sharded")
    assert path is not None
    model, optimizer = stepped(hidden)
    start = time.perf_counter()
    load_checkpoint(path, model, optimizer)  # written by 2 ranks, read by 1
    result = {
        "hidden": hidden,
        "files": sorted(p.name for p in (path / "tensors").glob("*.safetensors")),
        "bytes": directory_bytes(path / "tensors"),
        "save_2ranks_s": round(timings["save_s"], 3),
        "load_2ranks_s": round(timings["load_s"], 3),
        "load_at_1rank_s": round(time.perf_counter() - start, 3),
    }
    print(f"sharded {result}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and smaller models (~2-3 minutes)")
    parser.add_argument(
        "--steps", type=int, default=None, help="training steps per run (default 40; quick 12)"
    )
    parser.add_argument("--warmup", type=int, default=2, help="steps left out of the tokens/s median")
    parser.add_argument("--work", default=None, help="work directory (default: a temporary one)")
    parser.add_argument("--sharded-worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--hidden", type=int, default=512, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sharded_worker:
        sharded_worker(Path(args.sharded_worker), args.hidden)
        return
    steps = args.steps or (12 if args.quick else 40)
    rows = 4 if args.quick else 8
    widths = [128, 512] if args.quick else [128, 256, 512, 1024]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_dist_") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        summary = {
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
            "steps": steps,
            "throughput": throughput(work, steps, args.warmup, rows, args.quick),
            "checkpoints": checkpoint_costs(work, widths, 2 if args.quick else 3),
            "sharded_checkpoint": sharded_costs(work, widths[-1]),
        }
    summary["bench_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
