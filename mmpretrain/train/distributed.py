"""Distributed training: the process group, the model wrapping and the per-step
collectives, behind one :class:`Engine` so the loop does not branch on the backend.

``distributed.backend`` (DESIGN.md section 5):

- ``none``: one process, the model as built.
- ``ddp``: ``DistributedDataParallel``; every rank holds the whole model and optimizer
  (small models).
- ``fsdp2``: ``fully_shard`` on an explicit 1-D ``init_device_mesh``, one unit per
  transformer block, encoder and connector, then the root (embeddings, final norm, head);
  ``MixedPrecisionPolicy`` with bf16 parameters and fp32 gradient reduction when
  ``train.precision: bf16``; ``CPUOffloadPolicy`` with ``distributed.cpu_offload``.
- ``deepspeed``: ZeRO stage ``distributed.zero_stage`` around the client
  ``torch.optim.AdamW`` (no JIT-built DeepSpeed ops; its shared-memory comm op is not built).

Launch with torchrun (``mmpt train --nproc N`` runs it); without torchrun's environment
``fsdp2``/``ddp``/``deepspeed`` start a 1-rank group of their own (an in-memory store, no
network). Model set-up order (torchtitan's): build -> kernels -> activation checkpointing
(both in ``build_model``) -> ``torch.compile`` -> wrap/shard -> optimizer.

Loss: the loop divides each micro-batch's summed token loss by the label tokens of the
whole global batch (:meth:`DistContext.all_reduce_sum`); the engines average gradients
over ranks, so :meth:`Engine.backward` multiplies by the world size and the gradient is
that of the global mean, whatever the world size and accumulation.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from mmpretrain.errors import ConfigError, UserError
from mmpretrain.run_config import RunConfig
from mmpretrain.train.checkpoint import Checkpointer, load_checkpoint, load_deepspeed_checkpoint
from mmpretrain.train.config import DistributedConfig
from mmpretrain.train.optim import build_optimizer
from mmpretrain.train.signals import GracefulStop


@dataclass
class DistContext:
    """Where this process stands: backend, rank, world size, device and mesh."""

    backend: str = "none"
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    mesh: Any = None
    owns_group: bool = False
    checkpoint_group: Any = None  # a separate gloo group for background (async) checkpoint writes
    set_local_rank: bool = False  # LOCAL_RANK was set for DeepSpeed in a process of its own

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that logs and writes the run directory."""
        return self.rank == 0

    @property
    def grouped(self) -> bool:
        """Whether a process group is up (every backend but ``none``)."""
        return dist.is_available() and dist.is_initialized()

    def barrier(self) -> None:
        """Wait for every rank (no-op in one process)."""
        if self.grouped and self.world_size > 1:
            dist.barrier()

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (writing the run directory, training the
        tokenizer); the others run it after, reading what rank 0 wrote. If rank 0 fails
        inside, torchrun stops the others."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def all_reduce_sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sums over ranks (float64: exact for token counts)."""
        if not self.grouped or self.world_size == 1:
            return [float(v) for v in values]
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return [float(v) for v in tensor.tolist()]

    def sum_counters(self, counters: dict[str, int]) -> dict[str, int]:
        """Integer counters (same keys on every rank) summed over ranks."""
        keys = sorted(counters)
        sums = self.all_reduce_sum([counters[k] for k in keys])
        return {k: round(v) for k, v in zip(keys, sums, strict=True)}


def setup_distributed(cfg: DistributedConfig) -> DistContext:
    """Join (or start) the process group of ``cfg.backend``; ``none`` checks that torchrun
    did not start several processes."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if cfg.backend == "none":
        if launched > 1:
            raise ConfigError(
                f"torchrun started {launched} processes but distributed.backend is none: "
                "set distributed.backend=fsdp2 (or ddp, deepspeed)"
            )
        return DistContext()
    cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    owns = False
    if not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if cuda else "gloo"
        timeout = timedelta(minutes=cfg.timeout_minutes)
        if "RANK" in os.environ:  # torchrun: MASTER_ADDR/PORT (or the rendezvous) in the environment
            dist.init_process_group(backend, timeout=timeout)
        else:  # one process of its own: an in-memory store, nothing listens on the network
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
        owns = True
    ctx = DistContext(
        cfg.backend, dist.get_rank(), dist.get_world_size(), local_rank, device, owns_group=owns
    )
    if cfg.backend == "fsdp2":
        from torch.distributed.device_mesh import init_device_mesh

        ctx.mesh = init_device_mesh(device.type, (ctx.world_size,), mesh_dim_names=("dp",))
    if cfg.async_checkpoint and ctx.world_size > 1:
        ctx.checkpoint_group = dist.new_group(backend="gloo")
    if cfg.backend == "deepspeed":
        if "LOCAL_RANK" not in os.environ:  # deepspeed.initialize insists on it (unset without torchrun)
            os.environ["LOCAL_RANK"] = "0"
            ctx.set_local_rank = True
        _init_deepspeed_comm(cuda)
    return ctx


def _init_deepspeed_comm(cuda: bool) -> None:
    """DeepSpeed's comm layer over the existing group. Its TorchBackend would JIT-compile a
    shared-memory all-reduce op on CPU machines: skipped (plain torch.distributed is used)."""
    import importlib

    try:
        import deepspeed
    except ImportError as exc:
        raise UserError(
            f"distributed.backend=deepspeed needs DeepSpeed ({exc}): "
            "DS_BUILD_OPS=0 pip install 'mmpretrain-lm[deepspeed]' (make setup installs it)"
        ) from exc

    # (``import deepspeed.comm.torch as m`` would bind the torch package: deepspeed.comm imports torch)
    ds_torch = importlib.import_module("deepspeed.comm.torch")
    ds_torch.build_shm_op = lambda: None  # type: ignore[attr-defined]
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo", auto_mpi_discovery=False)


def teardown_distributed(ctx: DistContext) -> None:
    """Leave the process group if this process started it."""
    if ctx.backend == "deepspeed":
        import deepspeed.comm.comm as ds_comm
        import deepspeed.utils.groups as ds_groups

        # a later run in this process starts DeepSpeed's comm and its cached groups afresh
        ds_comm.cdb = None
        for name, value in list(vars(ds_groups).items()):
            if name.startswith("_") and name.endswith(("_GROUP", "_GROUP_RANKS")):
                setattr(ds_groups, name, {} if isinstance(value, dict) else None)
        ds_groups.mesh_device = None
    if ctx.set_local_rank:
        os.environ.pop("LOCAL_RANK", None)
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def distributed_run(cfg: DistributedConfig) -> Iterator[DistContext]:
    """:func:`setup_distributed` ... :func:`teardown_distributed`."""
    ctx = setup_distributed(cfg)
    try:
        yield ctx
    finally:
        teardown_distributed(ctx)


class SyncedStop(GracefulStop):
    """:class:`GracefulStop` whose :attr:`requested` is agreed by every rank at
    :meth:`sync` (once per step), so all ranks leave the loop and save at the same step."""

    def __init__(self, ctx: DistContext) -> None:
        super().__init__()
        self.ctx = ctx
        self._agreed = False

    def __enter__(self) -> SyncedStop:
        super().__enter__()
        return self

    @property
    def requested(self) -> bool:
        return self._agreed

    def sync(self) -> None:
        """Agree on whether any rank received a stop signal."""
        local = self.signal_name is not None
        self._agreed = self.ctx.all_reduce_sum([float(local)])[0] > 0
        if self._agreed and self.signal_name is None:
            self.signal_name = "a stop signal (received by another rank)"


# ---------------------------------------------------------------------------- engines


def check_distributed_config(cfg: RunConfig) -> None:
    """Combinations that cannot work, refused before any work."""
    backend = cfg.distributed.backend
    if backend == "deepspeed":
        if cfg.train.nan_policy == "skip":
            raise ConfigError(
                "train.nan_policy=skip is not supported with distributed.backend=deepspeed (ZeRO steps "
                "inside its engine): use nan_policy=raise, or distributed.backend=fsdp2"
            )
        if cfg.train.compile:
            raise ConfigError("train.compile with distributed.backend=deepspeed is not supported: use fsdp2")
        if cfg.model.kernels and cfg.distributed.zero_stage == 3:
            raise ConfigError(
                "model.kernels with ZeRO-3 is not supported (the kinds read whole weights outside forward): "
                "use distributed.backend=fsdp2 or zero_stage=2"
            )
    if cfg.distributed.async_checkpoint and backend == "deepspeed":
        raise ConfigError(
            "distributed.async_checkpoint is not supported with deepspeed (it saves its own files)"
        )
    if cfg.distributed.cpu_offload and not torch.cuda.is_available():
        raise ConfigError(
            "distributed.cpu_offload moves parameters and optimizer state from the GPU to CPU memory; "
            "without a CUDA GPU they are in CPU memory already: leave it false"
        )
    attention = getattr(cfg.model.llm, "attn_implementation", "sdpa")
    if attention == "flash_attention_2" and not flash_attention_available():
        raise ConfigError(
            "model.llm.attn_implementation=flash_attention_2 needs a CUDA GPU and the flash-attn package "
            "(pip install 'mmpretrain-lm[gpu]'); use sdpa (packed documents are isolated by a block mask)"
        )


def flash_attention_available() -> bool:
    """Whether flash-attn's varlen kernels can run here (CUDA, sm80+, package importable)."""
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 8:
        return False
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return True


def transformer_blocks(llm: nn.Module) -> list[nn.Module]:
    """The LLM's decoder layers (transformers' ``_no_split_modules`` classes)."""
    names = set(getattr(llm, "_no_split_modules", None) or [])
    blocks = [m for m in llm.modules() if type(m).__name__ in names]
    if not blocks:
        layers = getattr(getattr(llm, "model", None), "layers", None)
        blocks = list(layers) if isinstance(layers, nn.ModuleList) else []
    return blocks


class Engine:
    """The model, its optimizer and the backend's forward / backward / step."""

    def __init__(self, ctx: DistContext, cfg: RunConfig, model: nn.Module) -> None:
        self.ctx = ctx
        self.cfg = cfg
        self.model = model  # the MultimodalLM (sharded in place by fsdp2)
        self.device = ctx.device
        self._ddp: Any = None
        self._ds: Any = None
        self._last_micro = True
        backend = ctx.backend
        model.to(self.device)
        if backend == "fsdp2":
            _fully_shard(model, ctx, cfg)
        compiled: Any = torch.compile(model) if cfg.train.compile and backend != "ddp" else model
        if backend == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            self._ddp = DistributedDataParallel(
                model,
                device_ids=[ctx.local_rank] if self.device.type == "cuda" else None,
                find_unused_parameters=len(getattr(model, "encoders", {})) > 0,
            )
            compiled = torch.compile(self._ddp) if cfg.train.compile else self._ddp
        self.optimizer = build_optimizer(model, cfg.optim)
        if backend == "deepspeed":
            self._ds = _deepspeed_engine(model, self.optimizer, ctx, cfg)
            compiled = self._ds
        self._forward = compiled
        self.params = [p for group in self.optimizer.param_groups for p in group["params"]]

    def __call__(self, batch: Any) -> torch.Tensor:
        """Logits of ``batch`` (already on :attr:`device`)."""
        logits: torch.Tensor = self._forward(batch)
        return logits

    def begin_micro_step(self, last: bool) -> None:
        """Before each micro-batch's forward: gradients are reduced over ranks only after
        the last micro-batch of the optimizer step (DDP ``no_sync``, FSDP2
        ``set_requires_gradient_sync``; DeepSpeed counts micro-steps itself)."""
        self._last_micro = last
        if self._ddp is not None:
            self._ddp.require_backward_grad_sync = last
        elif self.ctx.backend == "fsdp2":
            self.model.set_requires_gradient_sync(last)  # type: ignore[operator]

    def backward(self, loss: torch.Tensor) -> None:
        """Backward of ``loss`` (this rank's share of the global-mean loss); the engines
        average gradients over ranks, hence the factor of world size."""
        scaled = loss * self.ctx.world_size if self.ctx.world_size > 1 else loss
        if self._ds is not None:
            self._ds.backward(scaled, scale_wrt_gas=False)
            if not self._last_micro:
                self._ds.step()  # not an accumulation boundary: only counts the micro-step
            return
        scaled.backward()

    def clip_grad_norm(self, max_norm: float | None) -> float:
        """Clip the global gradient norm; returns it before clipping. DeepSpeed clips and
        steps inside its engine here (its norm is known only then)."""
        if self._ds is not None:
            self._ds.step()
            norm = self._ds.get_global_grad_norm()
            return float(norm) if norm is not None else math.nan
        total = torch.nn.utils.clip_grad_norm_(self.params, max_norm or math.inf)
        full = total.full_tensor() if hasattr(total, "full_tensor") else total
        return float(full.item())

    def step(self) -> None:
        """The optimizer step (DeepSpeed stepped in :meth:`clip_grad_norm`)."""
        if self._ds is None:
            self.optimizer.step()

    def zero_grad(self) -> None:
        """Drop the gradients (DeepSpeed does it in its step)."""
        if self._ds is None:
            self.optimizer.zero_grad(set_to_none=True)

    def checkpointer(self, run_dir: Path, keep_last: int) -> Checkpointer:
        """The run's checkpoint writer for this backend."""
        return Checkpointer(
            run_dir,
            keep_last,
            async_save=self.cfg.distributed.async_checkpoint,
            process_group=self.ctx.checkpoint_group,
            deepspeed=self._ds,
        )

    def load(self, path: Path) -> dict[str, Any]:
        """Load a checkpoint into the model and optimizer (any world size for DCP ones)."""
        if self._ds is not None:
            return load_deepspeed_checkpoint(path, self._ds)
        return load_checkpoint(path, self.model, self.optimizer)


def _fully_shard(model: nn.Module, ctx: DistContext, cfg: RunConfig) -> None:
    """FSDP2 units: each transformer block, encoder and connector, then the root."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    bf16 = cfg.train.precision == "bf16"
    kwargs: dict[str, Any] = {
        "mesh": ctx.mesh,
        "mp_policy": MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if bf16
        else MixedPrecisionPolicy(),
        "offload_policy": CPUOffloadPolicy() if cfg.distributed.cpu_offload else OffloadPolicy(),
    }
    units: list[nn.Module] = transformer_blocks(model.llm)  # type: ignore[arg-type]
    units += list(getattr(model, "encoders", {}).values()) + list(getattr(model, "connectors", {}).values())
    for unit in units:
        if cfg.train.compile:
            unit.compile()  # per block, before sharding (DESIGN.md section 5 order)
        fully_shard(unit, reshard_after_forward=cfg.distributed.reshard_after_forward, **kwargs)
    fully_shard(model, reshard_after_forward=False, **kwargs)  # the root is gathered for the backward anyway


def _deepspeed_engine(
    model: nn.Module, optimizer: torch.optim.Optimizer, ctx: DistContext, cfg: RunConfig
) -> Any:
    """``deepspeed.initialize`` with the client AdamW and our batch geometry."""
    import deepspeed

    zero: dict[str, Any] = {"stage": cfg.distributed.zero_stage}
    if cfg.distributed.cpu_offload:
        zero["offload_optimizer"] = {"device": "cpu"}
    config = {
        "train_micro_batch_size_per_gpu": cfg.train.batch_size,
        "gradient_accumulation_steps": cfg.train.grad_accum,
        "train_batch_size": cfg.train.batch_size * cfg.train.grad_accum * ctx.world_size,
        "gradient_clipping": cfg.train.grad_clip or 0.0,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,  # the client torch.optim.AdamW
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    return engine
