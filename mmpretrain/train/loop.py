"""The training loop: one function that reads top to bottom (helpers do the rest)."""

from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmpretrain.data.media_vocab import MediaVocabulary
from mmpretrain.data.tokenizer import TextTokenizer
from mmpretrain.data.types import PackedBatch
from mmpretrain.errors import ConfigError, UserError
from mmpretrain.kernels import format_kernel_table, kernel_rows, kernels_on_step
from mmpretrain.model.build import build_model, media_processors, parameter_table
from mmpretrain.model.multimodal import MultimodalLM
from mmpretrain.model.packed import token_loss_sum
from mmpretrain.run_config import RunConfig
from mmpretrain.train.checkpoint import latest_checkpoint
from mmpretrain.train.data_setup import batch_stream, media_codes_for_run, tokenizer_for_run
from mmpretrain.train.distributed import (
    DistContext,
    Engine,
    SyncedStop,
    check_distributed_config,
    distributed_run,
)
from mmpretrain.train.init_from import (
    init_model_from,
    init_optimizer_from,
    resolve_init_checkpoint,
    run_dir_of,
)
from mmpretrain.train.media_loss import MediaLossMeter
from mmpretrain.train.metrics import MetricsLogger, truncate_metrics
from mmpretrain.train.run_dir import check_resume_config, config_hash, prepare_run_dir, record_run
from mmpretrain.train.schedule import lr_at
from mmpretrain.train.spikes import LossSpikeDetector


@dataclass(frozen=True)
class TrainResult:
    """What a call to :func:`train` did."""

    run_dir: Path
    start_step: int
    end_step: int
    last_loss: float | None
    checkpoint: Path | None
    stopped_by: str | None  # None (finished or stop_after_steps) or the signal's name
    tokens_per_s: float


@dataclass
class SourceCounters:
    """Cumulative documents and token positions per mix source (empty without mixing)."""

    docs: dict[str, int] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)

    @classmethod
    def start(cls, names: list[str], saved: dict[str, dict[str, int]] | None) -> SourceCounters:
        """Zero counters for the configured sources, plus those a checkpoint saved."""
        saved = saved or {}
        zeros = dict.fromkeys(names, 0)
        return cls({**zeros, **saved.get("docs", {})}, {**zeros, **saved.get("tokens", {})})

    def add(self, batch: PackedBatch) -> None:
        """Count the documents (pieces of split ones each count) and positions of ``batch``."""
        for row, names in enumerate(batch.sources):
            doc_ids = batch.doc_ids[row]
            lengths = torch.bincount(doc_ids[doc_ids >= 0], minlength=len(names)).tolist()
            for name, length in zip(names, lengths, strict=True):
                self.docs[name] = self.docs.get(name, 0) + 1
                self.tokens[name] = self.tokens.get(name, 0) + length

    def metrics(self) -> dict[str, int]:
        """``docs/<name>`` and ``tokens/<name>`` for metrics.jsonl."""
        return {
            **{f"docs/{name}": count for name, count in sorted(self.docs.items())},
            **{f"tokens/{name}": count for name, count in sorted(self.tokens.items())},
        }


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (every device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_checked_model(
    cfg: RunConfig, tokenizer: TextTokenizer, vocab: MediaVocabulary | None = None
) -> MultimodalLM:
    """The model of ``cfg``, checked against the tokenizer's vocabulary (with an
    early-fusion ``vocab``, sized to it)."""
    llm_cfg: Any = cfg.model.llm
    if vocab is None and llm_cfg.pretrained is None and llm_cfg.vocab_size < tokenizer.vocab_size:
        raise ConfigError(
            f"model.llm.vocab_size {llm_cfg.vocab_size} is smaller than the tokenizer's "
            f"{tokenizer.vocab_size} tokens: set model.llm.vocab_size >= {tokenizer.vocab_size}"
        )
    model = build_model(cfg.model, vocab)
    embeddings = model.llm.get_input_embeddings().num_embeddings  # type: ignore[operator]
    if embeddings < tokenizer.vocab_size:
        raise ConfigError(
            f"the LLM has {embeddings} embeddings but the tokenizer has {tokenizer.vocab_size} tokens"
        )
    return model


def _check_supported(cfg: RunConfig) -> None:
    check_distributed_config(cfg)
    if cfg.data is None:
        raise ConfigError("the config has no `data` section: add data.sources (see configs/text/tiny.yaml)")


def train(
    cfg: RunConfig,
    run_dir: Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    argv: list[str] | None = None,
) -> TrainResult:
    """Train ``cfg`` into ``run_dir`` (continuing its newest checkpoint with ``resume``);
    under torchrun every rank calls it (``distributed.backend``)."""
    _check_supported(cfg)
    with distributed_run(cfg.distributed) as ctx:
        return _train(cfg, run_dir, ctx, resume, overwrite, argv)


def _train(
    cfg: RunConfig, run_dir: Path, ctx: DistContext, resume: bool, overwrite: bool, argv: list[str] | None
) -> TrainResult:
    assert cfg.data is not None
    stage_keys: list[str] = []
    with ctx.main_first():  # rank 0 writes the run directory and tokenizer; the others read them
        if ctx.is_main:
            prepare_run_dir(run_dir, resume, overwrite)
            stage_keys = check_resume_config(run_dir, cfg) if resume else []
            record_run(run_dir, cfg, argv)
        seed_everything(cfg.train.seed)
        init = resolve_init_checkpoint(cfg.train.init_from) if cfg.train.init_from else None
        tokenizer = tokenizer_for_run(cfg.data, run_dir, init_run_dir=run_dir_of(init) if init else None)
        codes = media_codes_for_run(cfg.model, tokenizer, run_dir)  # early fusion: media tokenizers + ids
    vocab = codes.vocab if codes is not None else None
    model = build_checked_model(cfg, tokenizer, vocab)
    model.train()
    checkpoint = latest_checkpoint(run_dir) if resume else None
    if checkpoint is None and init is not None:
        report = init_model_from(init, model, vocab)
        if ctx.is_main:
            print(report, flush=True)
    engine = Engine(ctx, cfg, model)  # compile, wrap or shard (distributed.backend), optimizer
    optimizer = engine.optimizer
    if checkpoint is None and init is not None and cfg.optim.load_init_state:  # weights + optimizer
        message = init_optimizer_from(init, model, optimizer, vocab)
        if ctx.is_main:
            print(message, flush=True)

    step, tokens, nan_skips, saved_data, saved_sources = 0, 0, 0, None, None
    if checkpoint is not None:
        saved = engine.load(checkpoint)
        step, tokens, nan_skips, saved_data = (
            saved["step"],
            saved["tokens"],
            saved["nan_skips"],
            saved["data"],
        )
        saved_sources = saved.get("sources")
        if not ctx.is_main and saved_sources:  # rank 0 carries the totals; the others count from 0
            saved_sources = {kind: dict.fromkeys(counts, 0) for kind, counts in saved_sources.items()}
    start_step = step
    if ctx.is_main and resume:  # the logged steps after the checkpoint (all if none) are redone
        truncate_metrics(run_dir, step)
    mix = cfg.data.shards.mix if cfg.data.shards is not None else []
    sources = SourceCounters.start([source.name for source in mix], saved_sources)
    batches = batch_stream(
        cfg.data,
        tokenizer,
        media_processors(cfg.model),
        cfg.train.seq_len,
        cfg.train.batch_size,
        cfg.train.seed,
        saved_data,
        codes,
        ctx.rank,
        ctx.world_size,
    )
    media_loss = MediaLossMeter(vocab) if vocab is not None else None
    data_state: Any = None
    end_step = cfg.train.max_steps
    if cfg.train.stop_after_steps is not None:
        end_step = min(end_step, start_step + cfg.train.stop_after_steps)
    autocast = (
        torch.autocast(device_type=ctx.device.type, dtype=torch.bfloat16)
        if cfg.train.precision == "bf16"
        else contextlib.nullcontext()
    )

    saver = engine.checkpointer(run_dir, cfg.train.keep_last)

    def checkpoint_now() -> Path:
        state = {
            "tokens": tokens,
            "nan_skips": nan_skips,
            "data": data_state.as_dict(),  # this rank's; the checkpoint keeps every rank's
            "sources": {"docs": ctx.sum_counters(sources.docs), "tokens": ctx.sum_counters(sources.tokens)},
            "config_hash": config_hash(cfg),
            **({"media_vocab": vocab.as_dict()} if vocab is not None else {}),
        }
        return saver.save(step, model, optimizer, state)

    last_loss: float | None = None
    saved_path: Path | None = checkpoint
    window_start, window_tokens = time.perf_counter(), 0
    run_start, run_tokens = window_start, 0
    with SyncedStop(ctx) as stop, MetricsLogger(run_dir, cfg.train.max_steps, start_step, ctx.is_main) as log:
        spikes = LossSpikeDetector.for_run(run_dir, warn=log.message)  # loss_z, loss_spikes
        log.message(parameter_table(model))
        if cfg.model.kernels:
            log.message(format_kernel_table(kernel_rows(model)))
        if checkpoint is not None:
            log.message(f"resumed from {checkpoint} (step {start_step})")
        if stage_keys:
            log.message(f"new mixing weights from step {start_step} on ({', '.join(stage_keys)} changed)")
        while step < end_step and not stop.requested:
            lr = lr_at(step, cfg.optim, cfg.train.max_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            micro_batches = [next(batches) for _ in range(cfg.train.grad_accum)]
            local_labels = sum(b.num_label_tokens() for b, _ in micro_batches)
            label_tokens = max(ctx.all_reduce_sum([local_labels])[0], 1)  # of the whole global batch
            loss_sum_total = 0.0
            for i, (batch, _) in enumerate(micro_batches):
                engine.begin_micro_step(last=i == len(micro_batches) - 1)
                batch = batch.to(engine.device)
                with autocast:
                    logits = engine(batch)
                loss_sum, _ = token_loss_sum(logits, batch.labels)
                if media_loss is not None:
                    media_loss.add(step, logits, batch.labels, loss_sum)
                engine.backward(loss_sum / label_tokens)
                loss_sum_total += loss_sum.item()
            local_tokens = sum(int((b.doc_ids >= 0).sum()) for b, _ in micro_batches)
            loss_sum_total, step_tokens = ctx.all_reduce_sum([loss_sum_total, local_tokens])
            loss = loss_sum_total / label_tokens
            grad_norm = engine.clip_grad_norm(cfg.train.grad_clip)
            if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                nan_skips += 1
                keys = [k for b, _ in micro_batches for row in b.keys for k in row][:6]
                where = f"non-finite loss {loss} (grad norm {grad_norm}) at step {step + 1}, samples {keys}"
                if cfg.train.nan_policy == "raise":
                    raise UserError(
                        f"{where}; set train.nan_policy=skip to skip such steps, or lower optim.lr"
                    )
                if nan_skips > cfg.train.max_nan_skips:
                    raise UserError(
                        f"{where}: {nan_skips} non-finite steps skipped (limit train.max_nan_skips)"
                    )
                log.message(f"warning: {where}: step skipped ({nan_skips}/{cfg.train.max_nan_skips})")
            else:
                engine.step()
                last_loss = loss
            engine.zero_grad()
            step += 1
            kernels_on_step(model, step)  # masks, schedules, transitions of the kernel kinds
            data_state = micro_batches[-1][1]
            tokens += int(step_tokens)
            for batch, _ in micro_batches:
                sources.add(batch)
            window_tokens += int(step_tokens)
            run_tokens += int(step_tokens)
            if step % cfg.train.log_every == 0 or step == end_step:
                elapsed = time.perf_counter() - window_start
                slots = sum(b.input_ids.numel() for b, _ in micro_batches) * ctx.world_size
                log.log(
                    {
                        "step": step,
                        "loss": loss,
                        "lr": lr,
                        "grad_norm": grad_norm,
                        "tokens": tokens,
                        "tokens_per_s": window_tokens / max(elapsed, 1e-9),
                        "packing_efficiency": step_tokens / slots,
                        "nan_skips": nan_skips,
                        **spikes.update(step, loss),
                        **sources.metrics(),
                        **(media_loss.metrics() if media_loss is not None else {}),
                    }
                )
                window_start, window_tokens = time.perf_counter(), 0
            else:
                log.advance(step)
            stop.sync()  # every rank stops at the same step
            if step % cfg.train.save_every == 0 or step == end_step or stop.requested:
                saved_path = checkpoint_now()
        saved_path = saver.wait() or saved_path  # an async save commits here
        if stop.requested and saved_path is not None:
            log.message(f"received {stop.signal_name}: saved {saved_path}; continue with --resume")
    elapsed = max(time.perf_counter() - run_start, 1e-9)
    return TrainResult(
        run_dir, start_step, step, last_loss, saved_path, stop.signal_name, run_tokens / elapsed
    )
