"""`mmpt demo`: the mission end to end on this machine (text-only for now).

Trains the shipped ``tiny`` config on the built-in Shakespeare corpus, measures the
held-out loss, samples a continuation, and prints what it did and where to look.
Later issues add the image+speech data, few-shot evaluation and export.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch

from mmpretrain.config import load_config
from mmpretrain.data.data_config import DataConfig
from mmpretrain.data.text_sources import ShakespeareSource
from mmpretrain.data.tokenizer import load_tokenizer
from mmpretrain.model.build import build_model
from mmpretrain.run_config import RunConfig
from mmpretrain.train.checkpoint import latest_checkpoint, load_checkpoint
from mmpretrain.train.evaluate import heldout_loss
from mmpretrain.train.loop import train
from mmpretrain.train.metrics import read_metrics

QUICK_OVERRIDES = ["train.max_steps=40", "train.log_every=10", "train.save_every=20", "optim.warmup_steps=5"]
PROMPT = "KING. "


def run_demo(out: Path, quick: bool) -> int:
    """Run the demo into ``out`` (replacing an earlier demo there); returns 0."""
    started = time.perf_counter()
    if out.exists():
        shutil.rmtree(out)
    config: RunConfig = load_config("tiny", QUICK_OVERRIDES if quick else [])
    run_dir = out / "text"
    steps, seq_len, batch_size = config.train.max_steps, config.train.seq_len, config.train.batch_size
    print(f"[1/3] training `tiny` ({steps} steps, seq_len {seq_len}) into {run_dir}")
    result = train(config, run_dir)
    records = read_metrics(run_dir)

    print("[2/3] held-out loss on the Shakespeare held-out split")
    assert config.data is not None
    tokenizer = load_tokenizer(run_dir / "tokenizer")
    model = build_model(config.model)
    checkpoint = latest_checkpoint(run_dir)
    assert checkpoint is not None
    load_checkpoint(checkpoint, model, None)
    heldout = DataConfig(sources=[ShakespeareSource(split="heldout")], tokenizer=config.data.tokenizer)
    loss, tokens = heldout_loss(
        model, tokenizer, heldout, config.train.seq_len, max_batches=5 if quick else 20
    )

    print("[3/3] sampling a continuation (greedy)")
    prompt = torch.tensor([tokenizer.encode(PROMPT)])
    with torch.no_grad():
        model.eval()
        generated = model.llm.generate(  # type: ignore[operator]
            prompt,
            max_new_tokens=40,
            do_sample=False,
            use_cache=True,
            pad_token_id=tokenizer.pad_id,
            eos_token_id=tokenizer.eos_id,
        )
    sample = tokenizer.decode(generated[0].tolist())

    efficiency = sum(r["packing_efficiency"] for r in records) / len(records)
    tokens_per_s = sum(r["tokens_per_s"] for r in records) / len(records)
    lines = [
        "",
        "demo summary",
        f"  model            llama, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters "
        f"(configs/text/tiny.yaml{' --quick' if quick else ''})",
        f"  steps            {result.end_step} ({batch_size} x {seq_len} tokens per step)",
        f"  loss             {records[0]['loss']:.3f} (step {records[0]['step']}) -> "
        f"{records[-1]['loss']:.3f} (step {records[-1]['step']})",
        f"  held-out loss    {loss:.3f} over {tokens:,} tokens",
        f"  tokens/s         {tokens_per_s:,.0f} (mean of logged windows)",
        f"  packing          {efficiency:.3f} of token slots hold text",
        f"  sample           {sample!r}",
        f"  run directory    {run_dir} (metrics.jsonl, checkpoints/, tokenizer/)",
        f"  TensorBoard      tensorboard --logdir {run_dir / 'tb'}",
        f"  took             {time.perf_counter() - started:.0f} s",
        "  not yet in the demo: image+speech data, few-shot evaluation and export (later issues)",
    ]
    print("\n".join(lines))
    return 0
