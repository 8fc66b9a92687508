"""Early fusion vs encoder + connector on the demo shards, and precomputed media codes.

Demo shards (``build_demo_dataset``, ``--samples``), one BPE tokenizer trained on their
text (shared by every run), and the two media tokenizers: ``--vq DIR`` and
``--speech-units DIR`` (trained directories), or by default a quick fit of each here: the
speech-unit tokenizer of ``configs/tokenizers/speech_units_tiny.yaml`` fitted on the
first ``--unit-clips`` clips, and the VQ-VAE of ``configs/tokenizers/vq_tiny.yaml``
trained for ``--vq-steps`` steps (both with ``mmpt tokenizer train``). Throughput does
not depend on how good the codes are, only on how many there are (8 x 8 = 64 per image;
about 40 units per second of speech after de-duplication).

1. Codes precomputed into a copy of the shards (``add_codes_to_dataset``, what
   ``mmpt data build --tokenize-media`` does) and the data pipeline alone
   (``MediaBatchStream`` of the early-fusion config, ``--rows`` x ``--seq-len``): the first
   ``--pipeline-batches`` batches of a fresh stream (read, decode, tokenize, pack), with
   the codes reused from the shards and encoded on the fly: documents/s.
2. Training, the loop's own ``train()`` for ``--steps`` steps on the same data and batch
   geometry: ``models/early_fusion_tiny`` with precomputed codes, the same with codes
   encoded on the fly, and ``models/omni_tiny`` (SigLIP-style image tower + mlp, Whisper-
   style speech encoder + frame_stack_mlp) as the encoder + connector baseline. tokens/s =
   non-pad positions per second over the whole loop (``TrainResult.tokens_per_s``: every
   step, fetching its batches included); documents/s = documents (or pieces of split
   ones) per step x steps/s. Positions differ by design: an image is 64 + 2 positions in
   early fusion and 16 + 2 in omni_tiny, so documents/s is the figure to compare.

    python scripts/bench_early_fusion.py --quick     # 200 samples, 30 steps: ~4 minutes on 2 cores
    python scripts/bench_early_fusion.py             # 600 samples, 100 steps

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from mmpretrain.config import load_config
from mmpretrain.data.build.media_codes import add_codes_to_dataset
from mmpretrain.data.demo_data import build_demo_dataset
from mmpretrain.run_config import RunConfig
from mmpretrain.train.data_setup import batch_stream, media_codes_for_run, tokenizer_for_run
from mmpretrain.train.loop import train
from mmpretrain.train.metrics import read_metrics


def cpu_pressure() -> float | None:
    """Linux PSI: % of the last 60 s in which some runnable task waited for a CPU."""
    try:
        line = Path("/proc/pressure/cpu").read_text(encoding="utf-8").splitlines()[0]
    except (OSError, IndexError):
        return None
    return float(dict(item.split("=") for item in line.split()[1:])["avg60"])


def media_tokenizers(args: argparse.Namespace, work: Path, shards: str) -> dict[str, str]:
    """The vq and speech-unit tokenizer directories: given, or trained quickly here with
    `mmpt tokenizer train` on the shipped tiny configs (fewer vq steps, fewer clips)."""
    import yaml

    from mmpretrain.cli import main as mmpt
    from mmpretrain.config import load_yaml_with_bases, resolve_config_path

    chosen = {"image": args.vq, "audio": args.speech_units}
    shipped = {
        "image": ("vq", "tokenizers/vq_tiny"),
        "audio": ("speech_units", "tokenizers/speech_units_tiny"),
    }
    for modality, (kind, name) in shipped.items():
        if chosen[modality] is not None:
            continue
        raw = load_yaml_with_bases(resolve_config_path(name))
        if kind == "vq":
            raw["train"] = {
                **raw.get("train", {}),
                "steps": args.vq_steps,
                "save_every": 0,
                "tensorboard": False,
            }
        else:
            raw["fit"] = {**raw.get("fit", {}), "max_clips": args.unit_clips}
        config = work / f"{kind}.yaml"
        config.write_text(yaml.safe_dump(raw), encoding="utf-8")
        chosen[modality] = work / kind
        argv = ["tokenizer", "train", "--kind", kind, "--config", str(config), "--input", shards]
        if mmpt([*argv, "--out", str(chosen[modality]), "--overwrite"]) != 0:
            raise SystemExit(f"training the {kind} tokenizer failed")
    return {modality: str(directory) for modality, directory in chosen.items()}


def run_config(
    name: str, shards: Path, tokenizers: dict[str, str], bpe: Path, args: argparse.Namespace
) -> RunConfig:
    """``name`` on ``shards`` with the bench's batch geometry and the shared BPE."""
    overrides = [
        f'data.shards.reader.shards=["{shards}/shard-*.tar"]',
        f"data.tokenizer.path={bpe}",
        f"train.max_steps={args.steps}",
        f"train.batch_size={args.rows}",
        f"train.seq_len={args.seq_len}",
        "train.log_every=1",
        f"train.save_every={args.steps}",
        f"train.seed={args.seed}",
    ]
    if "early_fusion" in name:
        overrides += [f"model.media_tokenizers.image.path={tokenizers['image']}"]
        overrides += [f"model.media_tokenizers.audio.path={tokenizers['audio']}"]
    return load_config(name, overrides)


def pipeline_rate(cfg: RunConfig, work: Path, batches: int) -> dict[str, Any]:
    """Documents/s of the data pipeline alone (read, decode, tokenize, pack: the first
    ``batches`` batches of a fresh stream, its first packing round included), and how many
    media segments had their codes encoded on the fly or reused from the shards."""
    assert cfg.data is not None
    tokenizer = tokenizer_for_run(cfg.data, work, log=lambda _: None)
    vocab_dir = work / f"pipeline-{time.monotonic_ns()}"
    vocab_dir.mkdir()
    codes = media_codes_for_run(cfg.model, tokenizer, vocab_dir)
    assert codes is not None
    started, documents = time.perf_counter(), 0
    stream = batch_stream(cfg.data, tokenizer, {}, cfg.train.seq_len, cfg.train.batch_size, 0, None, codes)
    for _ in range(batches):
        batch, _ = next(stream)
        documents += sum(len(row) for row in batch.keys)
    seconds = time.perf_counter() - started
    return {"docs_per_s": documents / seconds, "seconds": seconds, "documents": documents, **codes.counts}


def train_rate(name: str, cfg: RunConfig, run_dir: Path) -> dict[str, Any]:
    """Train ``cfg``; throughput over the whole loop (every step, data fetching included)."""
    result = train(cfg, run_dir, overwrite=True)
    records = read_metrics(run_dir)
    steps = result.end_step - result.start_step
    tokens_per_step = records[-1]["tokens"] / steps
    docs = documents_per_step(cfg, run_dir)
    steps_per_s = result.tokens_per_s / tokens_per_step
    return {
        "config": name,
        "tokens_per_s": result.tokens_per_s,
        "steps_per_s": steps_per_s,
        "docs_per_s": docs * steps_per_s,
        "docs_per_step": docs,
        "tokens_per_step": tokens_per_step,
        "median_step_tokens_per_s": statistics.median(r["tokens_per_s"] for r in records[1:]),
        "last_loss": records[-1]["loss"],
        "loss_media_codes": records[-1].get("loss_media_codes"),
    }


def documents_per_step(cfg: RunConfig, run_dir: Path) -> float:
    """Mean documents (pieces) per step over the first 10 steps of ``cfg``'s batch stream."""
    from mmpretrain.model.build import media_processors

    assert cfg.data is not None
    tokenizer = tokenizer_for_run(cfg.data, run_dir, log=lambda _: None)
    codes = media_codes_for_run(cfg.model, tokenizer, run_dir)
    stream = batch_stream(
        cfg.data,
        tokenizer,
        media_processors(cfg.model),
        cfg.train.seq_len,
        cfg.train.batch_size,
        cfg.train.seed,
        None,
        codes,
    )
    counts = [sum(len(row) for row in next(stream)[0].keys) for _ in range(10)]
    return statistics.mean(counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 samples, 30 steps")
    parser.add_argument("--samples", type=int, default=None, help="demo samples (default 600; quick 200)")
    parser.add_argument(
        "--steps", type=int, default=None, help="training steps per run (default 60; quick 15)"
    )
    parser.add_argument("--pipeline-batches", type=int, default=100, help="batches timed in part 1 (100)")
    parser.add_argument("--rows", type=int, default=2, help="packed rows per step (default 2)")
    parser.add_argument("--seq-len", type=int, default=512, help="positions per row (default 512)")
    parser.add_argument("--vq", type=Path, help="a trained vq tokenizer directory (default: train one here)")
    parser.add_argument(
        "--speech-units", type=Path, help="a trained speech_units directory (default: fit here)"
    )
    parser.add_argument(
        "--vq-steps", type=int, default=100, help="steps of the quick vq training (default 100)"
    )
    parser.add_argument(
        "--unit-clips", type=int, default=40, help="clips of the quick k-means fit (default 40)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a per-core figure)")
    parser.add_argument("--work-dir", type=Path, help="keep the data and runs here (default: a temp dir)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.samples = args.samples or (200 if args.quick else 600)
    args.steps = args.steps or (30 if args.quick else 100)
    torch.set_num_threads(args.threads)
    pressure_before = cpu_pressure()

    with contextlib.ExitStack() as stack:
        if args.work_dir is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_early_fusion_")))
        else:
            work = args.work_dir
            work.mkdir(parents=True, exist_ok=True)
        plain, coded = work / "demo", work / "demo-coded"
        if not (plain / "index.json").is_file():
            build_demo_dataset(plain, samples=args.samples, seed=args.seed, progress=False)
        tokenizers = media_tokenizers(args, work, str(plain / "shard-*.tar"))
        shutil.rmtree(coded, ignore_errors=True)
        shutil.copytree(plain, coded)
        started = time.perf_counter()
        stored = add_codes_to_dataset(coded, tokenizers)["segments"]
        precompute_s = time.perf_counter() - started
        bpe = work / "bpe-run" / "tokenizer"  # the BPE a run of these configs trains on the shards' text
        base: RunConfig = load_config(
            "models/early_fusion_tiny", [f'data.shards.reader.shards=["{plain}/shard-*.tar"]']
        )
        assert base.data is not None
        tokenizer_for_run(base.data, bpe.parent, log=print)

        fusion_coded = run_config("models/early_fusion_tiny", coded, tokenizers, bpe, args)
        fusion_plain = run_config("models/early_fusion_tiny", plain, tokenizers, bpe, args)
        omni = run_config("models/omni_tiny", plain, tokenizers, bpe, args)
        pipeline = {
            "precomputed": pipeline_rate(fusion_coded, work, args.pipeline_batches),
            "on_the_fly": pipeline_rate(fusion_plain, work, args.pipeline_batches),
        }
        runs = {
            "early_fusion_precomputed": train_rate(
                "early_fusion_tiny", fusion_coded, work / "run-fusion-coded"
            ),
            "early_fusion_on_the_fly": train_rate(
                "early_fusion_tiny", fusion_plain, work / "run-fusion-plain"
            ),
            "encoder_connector": train_rate("omni_tiny", omni, work / "run-omni"),
        }

    pressure_after = cpu_pressure()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s); CPU pressure (PSI some avg60) {pressure_before}% before, "
        f"{pressure_after}% after"
    )
    print(
        f"data: {args.samples} demo samples; codes stored for {stored} segments in {precompute_s:.1f} s "
        f"(vq {tokenizers['image']}, speech units {tokenizers['audio']})"
    )
    for name, row in pipeline.items():
        print(
            f"pipeline {name:<12} {row['docs_per_s']:8.1f} docs/s  (encoded {row.get('encoded', 0)}, "
            f"reused {row.get('stored', 0)} media segments)"
        )
    for name, row in runs.items():
        print(
            f"train {name:<25} {row['tokens_per_s']:9,.0f} tokens/s  {row['docs_per_s']:7.1f} docs/s  "
            f"{row['steps_per_s']:5.2f} steps/s  last loss {row['last_loss']:.3f}"
        )
    speedup_pipeline = pipeline["precomputed"]["docs_per_s"] / pipeline["on_the_fly"]["docs_per_s"]
    speedup_train = (
        runs["early_fusion_precomputed"]["tokens_per_s"] / runs["early_fusion_on_the_fly"]["tokens_per_s"]
    )
    print(f"precomputed codes: pipeline {speedup_pipeline:.2f}x, training {speedup_train:.2f}x")
    summary = {
        "samples": args.samples,
        "steps": args.steps,
        "rows": args.rows,
        "seq_len": args.seq_len,
        "threads": torch.get_num_threads(),
        "precompute_s": precompute_s,
        "pipeline": pipeline,
        "train": runs,
        "precomputed_speedup_pipeline": speedup_pipeline,
        "precomputed_speedup_train": speedup_train,
        "early_fusion_vs_encoder_tokens": runs["early_fusion_precomputed"]["tokens_per_s"]
        / runs["encoder_connector"]["tokens_per_s"],
        "early_fusion_vs_encoder_docs": runs["early_fusion_precomputed"]["docs_per_s"]
        / runs["encoder_connector"]["docs_per_s"],
        "cpu_pressure": [pressure_before, pressure_after],
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
