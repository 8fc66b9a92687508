"""Continual pre-training: forgetting with and without replay, re-warmed vs constant-LR
continuation, and a WSD cooldown branch vs a full cosine run, as one recipe.

Domain A is the built-in Shakespeare corpus (text shards, ``mmpt data build --format
text``; held out: its every-20th document); domain B is the demo data (drawn shapes with
captions, counting questions, interleaved image-text documents and short texts;
held out: its ``heldout/`` split). The model is ``models/vlm_tiny`` (a 2-layer Llama with a
SigLIP-style tower + mlp connector); one BPE tokenizer trained on both domains serves every
stage. The recipe (run by :func:`mmpretrain.recipes.runner.run_recipe`, held-out losses
every ``--every`` steps):

- ``base``: pre-train on A for ``--steps`` steps (warmup + cosine; tower and connector
  frozen: A has no pictures);
- from base's final checkpoint, ``--steps`` more steps on B (the same budget):
  ``no_replay`` (re-warmed + re-decayed cosine, B only), ``replay_R`` (the same with a
  fraction R of the *tokens* replayed from A: the mix weights are set from the measured
  tokens per document of each domain; the realized share is read back from the per-source
  counters) and ``constant`` (B only, no warmup, a constant learning rate equal to base's
  final one: "just keep training");
- ``wsd_stable`` (A, warmup + constant, ``steps - cooldown`` steps) and ``wsd_cooldown``
  branched from it (weights + Adam state, linear decay to base's floor over ``cooldown``
  steps): the same number of tokens as base's cosine run.

forgetting = held-out loss on A at the end of a continuation minus at its start (= base's
end); gain on B = B's held-out loss at the start minus at the end. One run per setting
(one seed): read small differences with care.

    python scripts/bench_cpt.py --quick      # 60 steps per stage, 10% replay
    python scripts/bench_cpt.py              # 300 steps per stage, 5/10/25% replay

Writes the per-domain curves to ``--plot`` (default docs/cpt_curves.png); the last line
printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from mmpretrain.config import load_yaml_with_bases, resolve_config_path
from mmpretrain.data.build.options import BuildOptions
from mmpretrain.data.build.runner import build_dataset
from mmpretrain.data.demo_data import build_demo_dataset
from mmpretrain.data.reader import expand_shards
from mmpretrain.data.shard_io import iter_shard_samples
from mmpretrain.data.skips import SkipCounter
from mmpretrain.data.tokenizer import load_tokenizer, train_bpe
from mmpretrain.recipes.config import recipe_from_data
from mmpretrain.recipes.monitor import read_jsonl
from mmpretrain.recipes.runner import run_recipe
from mmpretrain.train.metrics import read_metrics

DEMO_KINDS = {"caption": 0.4, "vqa": 0.2, "interleaved": 0.2, "text": 0.2}  # no speech: a VLM


def domain_texts(directory: Path, limit: int) -> list[tuple[str, int]]:
    """(text, images) of the first ``limit`` documents of a shard directory."""
    docs: list[tuple[str, int]] = []
    for shard in expand_shards([str(directory / "shard-*.tar")]):
        for sample in iter_shard_samples(shard, SkipCounter(max_skips=None, name="bench")):
            text = " ".join(s.text or "" for s in sample.segments if s.kind == "text")
            docs.append((text, sum(s.kind == "image" for s in sample.segments)))
            if len(docs) >= limit:
                return docs
    return docs


def positions_per_document(docs: list[tuple[str, int]], tokenizer: Any, image_positions: int) -> float:
    """Mean LLM positions of a document: its tokens + EOS + image placeholders."""
    ids = tokenizer.encode_batch([text for text, _ in docs])
    return sum(len(i) + 1 + image_positions * images for i, (_, images) in zip(ids, docs, strict=True)) / len(
        docs
    )


def build_data(work: Path, quick: bool) -> dict[str, Any]:
    started = time.perf_counter()
    a, b = work / "shakespeare", work / "demo"
    build_dataset(
        "text", BuildOptions(input=Path("shakespeare"), out=a, limit=800 if quick else None), progress=False
    )
    build_demo_dataset(
        b, samples=300 if quick else 600, shards=2, seed=0, kinds_mix=DEMO_KINDS, progress=False
    )
    texts = [t for t, _ in domain_texts(a, 800)] + [t for t, _ in domain_texts(b, 600)]
    tokenizer_dir = work / "tokenizer"
    train_bpe(texts, vocab_size=1000).save(tokenizer_dir)
    tokenizer = load_tokenizer(tokenizer_dir)
    image_positions = 16 + 2  # vlm_tiny: 32 px, patch 8 -> 16 features (mlp keeps them) + begin/end
    lengths = {
        "A": positions_per_document(domain_texts(a, 400), tokenizer, image_positions),
        "B": positions_per_document(domain_texts(b, 400), tokenizer, image_positions),
    }
    return {
        "A": a,
        "B": b,
        "tokenizer": tokenizer_dir,
        "lengths": lengths,
        "seconds": time.perf_counter() - started,
    }


def recipe_data(
    data: dict[str, Any], steps: int, every: int, replays: list[float], cooldown: int
) -> dict[str, Any]:
    base = load_yaml_with_bases(resolve_config_path("models/vlm_tiny"))
    lr, floor = 2.0e-3, 0.1
    warmup = max(steps // 10, 1)
    frozen_tower = {"encoders": False, "connectors": False}
    base["data"] = {
        "shards": {
            "mix": [
                {"name": "A", "reader": {"shards": [str(data["A"] / "shard-*.tar")], "shuffle_buffer": 256}},
                {"name": "B", "reader": {"shards": [str(data["B"] / "shard-*.tar")], "shuffle_buffer": 256}},
            ],
            "buffer_docs": 256,
        },
        "tokenizer": {"name": "bpe", "path": str(data["tokenizer"])},
    }
    base["train"] = {**base["train"], "batch_size": 4, "seq_len": 256, "log_every": 5, "save_every": 10_000}
    base["optim"] = {"lr": lr, "min_lr_ratio": floor, "warmup_steps": warmup}
    rewarm = {"schedule": "cosine", "warmup_steps": warmup}
    stages: dict[str, Any] = {
        "base": {"steps": steps, "mix": {"A": 1}, "trainable": frozen_tower, "optim": rewarm},
        "no_replay": {"steps": steps, "init": {"source": "base"}, "mix": {"B": 1}, "optim": rewarm},
    }
    for r in replays:  # token fraction r -> document weights from the measured lengths
        weights = {"A": r / data["lengths"]["A"], "B": (1 - r) / data["lengths"]["B"]}
        stages[f"replay_{round(r * 100)}"] = {
            "steps": steps,
            "init": {"source": "base"},
            "mix": weights,
            "optim": rewarm,
        }
    stages["constant"] = {
        "steps": steps,
        "init": {"source": "base"},
        "mix": {"B": 1},
        "optim": {"schedule": "constant", "warmup_steps": 0, "lr": lr * floor},
    }
    stages["wsd_stable"] = {
        "steps": steps - cooldown,
        "init": {"source": "none"},
        "mix": {"A": 1},
        "trainable": frozen_tower,
        "optim": {"schedule": "constant", "warmup_steps": warmup},
        "train": {"seed": 0},  # base's seed: the same init and data order as the cosine run
    }
    stages["wsd_cooldown"] = {
        "steps": cooldown,
        "init": {"source": "wsd_stable", "load": "weights+optimizer"},
        "mix": {"A": 1},
        "trainable": frozen_tower,
        "optim": {"schedule": "wsd", "warmup_steps": 0, "decay_fraction": 1.0},
    }
    monitor = {
        "every": every,
        "max_batches": 4,
        "domains": {
            "shakespeare": {"sources": [{"format": "shakespeare", "split": "heldout"}]},
            "demo": {
                "shards": {"reader": {"shards": [str(data["B"] / "heldout/shard-*.tar")]}, "buffer_docs": 64}
            },
        },
    }
    return {**base, "stages": stages, "monitor": monitor}


def token_share(run_dir: Path, stage_label: str) -> float | None:
    records = read_metrics(run_dir / "stages" / stage_label)
    if not records:
        return None
    last = records[-1]
    a, b = last.get("tokens/A", 0), last.get("tokens/B", 0)
    return a / (a + b) if a + b else None


def plot(run_dir: Path, out: Path, stages: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evals = read_jsonl(run_dir / "eval.jsonl")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    panels = [
        (
            "shakespeare",
            "held-out loss on A (Shakespeare): forgetting",
            [s for s in stages if s != "wsd_stable" and s != "wsd_cooldown"],
        ),
        ("demo", "held-out loss on B (demo data): learning", [s for s in stages if not s.startswith("wsd")]),
        (
            "shakespeare",
            "A: WSD cooldown branch vs cosine (equal tokens)",
            ["base", "wsd_stable", "wsd_cooldown"],
        ),
    ]
    for ax, (domain, title, names) in zip(axes, panels, strict=True):
        for name in names:
            points = [(r["step"], r[f"heldout/{domain}/loss"]) for r in evals if r["stage"] == name]
            if points:
                xs, ys = zip(*sorted(points), strict=True)
                ax.plot(xs, ys, marker=".", label=name)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("global step")
        ax.set_ylabel("held-out loss (nats)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="60 steps per stage, one replay fraction")
    parser.add_argument("--steps", type=int, help="steps per stage (default 300; --quick 60)")
    parser.add_argument("--every", type=int, help="held-out evaluation every N steps (default steps/6)")
    parser.add_argument(
        "--replay", help="replayed token fractions, comma-separated (default 0.05,0.1,0.25; --quick 0.1)"
    )
    parser.add_argument("--plot", default="docs/cpt_curves.png", help="PNG of the per-domain curves")
    parser.add_argument("--work", help="work directory (default: a temporary one, removed)")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    steps = args.steps or (60 if args.quick else 300)
    every = args.every or max(steps // 6, 1)
    replays = [float(r) for r in (args.replay or ("0.1" if args.quick else "0.05,0.1,0.25")).split(",")]
    cooldown = max(steps // 5, 1)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench_cpt_"))
    started = time.perf_counter()
    try:
        data = build_data(work, args.quick)
        print(
            f"data ready in {data['seconds']:.1f} s; positions per document: A {data['lengths']['A']:.0f}, "
            f"B {data['lengths']['B']:.0f}",
            flush=True,
        )
        recipe = recipe_from_data(recipe_data(data, steps, every, replays, cooldown), "bench_cpt")
        run_dir = work / "run"
        result = run_recipe(recipe, run_dir, overwrite=True)
        assert result.summary is not None
        stages = result.summary["stages"]
        labels = {s.name: s.label for s in recipe.stages(run_dir)}
        a_before = stages["base"]["heldout"]["shakespeare"]["end"]
        b_before = stages["base"]["heldout"]["demo"]["end"]

        def continuation(name: str) -> dict[str, Any]:
            held = stages[name]["heldout"]
            return {
                "forgetting": held["shakespeare"]["end"] - a_before,
                "a_after": held["shakespeare"]["end"],
                "a_peak": held["shakespeare"]["peak"],
                "b_after": held["demo"]["end"],
                "b_gain": b_before - held["demo"]["end"],
                "replay_token_share": token_share(run_dir, labels[name]),
            }

        figures: dict[str, Any] = {"no_replay": continuation("no_replay")}
        for r in replays:
            figures[f"replay_{round(r * 100)}"] = continuation(f"replay_{round(r * 100)}")
        figures["constant"] = continuation("constant")
        plot(run_dir, Path(args.plot), stages)
        first_replay = f"replay_{round(replays[0] * 100)}"
        wsd_a = stages["wsd_cooldown"]["heldout"]["shakespeare"]["end"]
        output = {
            "quick": args.quick,
            "steps_per_stage": steps,
            "tokens_per_step": 4 * 256,
            "a_before": a_before,
            "b_before": b_before,
            "forgetting_no_replay": figures["no_replay"]["forgetting"],
            "forgetting_with_replay": figures[first_replay]["forgetting"],
            "replay_fraction": replays[0],
            "replay_forgets_less": figures[first_replay]["forgetting"] < figures["no_replay"]["forgetting"],
            "continuations": figures,
            "rewarm_vs_constant": {
                "b_after_rewarm": figures["no_replay"]["b_after"],
                "b_after_constant": figures["constant"]["b_after"],
                "forgetting_rewarm": figures["no_replay"]["forgetting"],
                "forgetting_constant": figures["constant"]["forgetting"],
            },
            "wsd_vs_cosine": {
                "a_cosine": a_before,
                "a_wsd_cooldown": wsd_a,
                "a_wsd_stable_end": stages["wsd_stable"]["heldout"]["shakespeare"]["end"],
                "cooldown_steps": cooldown,
            },
            "plot": args.plot,
            "seconds": time.perf_counter() - started,
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        }
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(output))


if __name__ == "__main__":
    main()
