"""The ``train``, ``optim`` and ``distributed`` sections of a run config."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from mmpretrain.config import ConfigModel


class TrainConfig(ConfigModel):
    """Steps, batch geometry, cadence and numerics of the training loop."""

    max_steps: int = Field(1000, gt=0)
    """Optimizer steps of the whole run (the schedule's length)."""
    stop_after_steps: int | None = Field(None, gt=0)
    """End this invocation after this many steps with a checkpoint, as a preemption would;
    the schedule still spans max_steps (run control: may change on resume)."""
    batch_size: int = Field(8, gt=0)
    """Packed sequences per rank per micro-step."""
    grad_accum: int = Field(1, gt=0)
    """Micro-steps per optimizer step (global batch = batch_size x grad_accum x world size)."""
    seq_len: int = Field(512, gt=0)
    """Tokens per packed sequence."""
    seed: int = 0
    """Seed of every random number generator."""
    log_every: int = Field(10, gt=0)
    """Steps between metric lines (run control)."""
    save_every: int = Field(500, gt=0)
    """Steps between checkpoints (run control)."""
    keep_last: int = Field(3, gt=0)
    """Committed checkpoints kept; older ones are deleted after a newer one commits."""
    grad_clip: float | None = Field(1.0, gt=0)
    """Clip the global gradient norm to this value (None: no clipping)."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """bf16 runs the forward pass under autocast; parameters and optimizer stay fp32."""
    compile: bool = False
    """torch.compile the model after kernels and activation checkpointing are applied."""
    nan_policy: Literal["raise", "skip"] = "raise"
    """On a non-finite loss or gradient: stop with the step and sample keys, or skip the
    optimizer step (counted, up to max_nan_skips)."""
    max_nan_skips: int = Field(10, ge=0)
    """nan_policy=skip: stop after this many skipped steps."""
    init_from: str | None = None
    """Start from the model weights of this checkpoint or run directory (its newest
    committed checkpoint) instead of the init: no optimizer state, step 0, data from the
    start. Token rows map by id: text rows are kept and media code rows are kept where the
    checkpoint has the same media tokenizer, others start at the mean of the kept rows, so a
    text-only run extends to early fusion. A bpe data.tokenizer without path reuses that
    run's tokenizer. Not read when the run resumes from a checkpoint of its own."""


class OptimConfig(ConfigModel):
    """AdamW and its learning-rate schedule."""

    name: Literal["adamw"] = "adamw"
    """Optimizer (fused or foreach implementation where the device has one)."""
    lr: float = Field(3e-4, gt=0)
    """Peak learning rate."""
    weight_decay: float = Field(0.1, ge=0)
    """Decoupled weight decay (not applied to norms, biases and embeddings)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """Adam beta1, beta2."""
    eps: float = Field(1e-8, gt=0)
    """Adam epsilon."""
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    """Learning-rate shape after warmup: cosine decay, warmup-stable-decay, or constant
    (with decay_steps: constant, then a cooldown)."""
    warmup_steps: int = Field(0, ge=0)
    """Linear warmup steps from 0 to lr (a continued run re-warms from its own step 0)."""
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    """Final learning rate as a fraction of lr (cosine, wsd, cooldowns)."""
    decay_fraction: float = Field(0.2, gt=0, le=1)
    """wsd: fraction of max_steps spent in the final decay (1.0 with warmup_steps 0: the
    whole run is a cooldown, e.g. one branched from a stable-phase checkpoint)."""
    decay_steps: int | None = Field(None, ge=0)
    """wsd: length of the final decay in steps (instead of decay_fraction); constant: a
    cooldown over the last decay_steps steps (None or 0: none)."""
    decay_shape: Literal["linear", "cosine", "sqrt"] = "linear"
    """wsd and cooldowns: shape of the decay from lr to min_lr_ratio * lr (sqrt: 1 - sqrt,
    which keeps the rate higher for longer, as in Hägele et al. 2024)."""
    lr_multipliers: dict[str, float] = Field(default_factory=dict)
    """Per-group learning-rate factors by parameter name: a prefix (`connectors`,
    `encoders.vision`, `llm.model.embed_tokens`) or an fnmatch glob (`*.mlp.*`); the longest
    matching key wins; e.g. {connectors: 10, encoders: 0.1}. metrics.jsonl logs the base lr."""
    load_init_state: bool = False
    """With train.init_from: also load the checkpoint's optimizer state (Adam moments, step
    counts) for every parameter it trained ("weights + optimizer"; e.g. a cooldown branched
    from a stable-phase checkpoint); other parameters start with a fresh state."""

    @model_validator(mode="after")
    def _check_betas(self) -> OptimConfig:
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must lie in [0, 1), got {list(self.betas)}")
        bad = {k: v for k, v in self.lr_multipliers.items() if not v >= 0}
        if bad:
            raise ValueError(f"lr_multipliers must be >= 0, got {bad}")
        return self


class DistributedConfig(ConfigModel):
    """How the run spreads over processes (launched by torchrun or `mmpt train --nproc`)."""

    backend: Literal["none", "ddp", "fsdp2", "deepspeed"] = "none"
    """Data-parallel engine; none = a single process. fsdp2 and deepspeed also run in one
    process (a 1-rank group of their own); ddp is for small models (every rank holds all
    parameters and optimizer state)."""
    zero_stage: Literal[2, 3] = 2
    """deepspeed: ZeRO stage (2: optimizer state and gradients partitioned; 3: parameters too)."""
    cpu_offload: bool = False
    """fsdp2: keep sharded parameters, gradients and optimizer state in CPU memory
    (CPUOffloadPolicy); deepspeed: offload the optimizer state to the CPU."""
    reshard_after_forward: bool = True
    """fsdp2: free the gathered parameters of each block after its forward (gather again in
    backward; less memory), or keep them until the backward (less communication)."""
    async_checkpoint: bool = False
    """fsdp2/ddp/none: write checkpoints in the background (torch.distributed.checkpoint
    async_save): training continues after the tensors are copied; the checkpoint commits
    when the write has finished (checked at the next save and at the end)."""
    timeout_minutes: int = Field(30, gt=0)
    """Collective timeout: a rank that waits longer for the others fails instead of hanging."""
