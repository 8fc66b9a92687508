"""Fault injection for the reliability tests and ``scripts/bench_reliability.py``.

A *crash child* is a fresh Python interpreter that runs ``mmpt train`` through
``mmpretrain.cli.main`` with a crash point armed and is killed with SIGKILL at that point:
a real kill -9 (no ``finally`` blocks, no flushing, no atexit). Points are hooks around the
functions the run calls (the n-th call of the hooked function kills the process at once),
or a signal from the parent after a delay (wherever the child happens to be). A fresh
interpreter, not a ``fork()`` of the test process: forking a process that has already run
torch (threads, autograd state) made children die or fail at random once other tests had
run in the same pytest worker. Only a child that needs set-up in its own process
(``before_main``, e.g. RLIMIT_FSIZE) is still forked.

The child runs single-threaded torch, as the tests do, so its floating-point results are
bitwise those of an in-process run.
"""

from __future__ import annotations

import io
import json
import os
import random
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

WORDS = (
    "the",
    "king",
    "queen",
    "speaks",
    "of",
    "night",
    "and",
    "day",
    "love",
    "war",
    "crown",
    "sword",
    "fool",
    "heart",
    "storm",
    "sea",
    "ship",
    "castle",
    "forest",
    "letter",
    "ring",
    "gold",
    "silver",
    "moon",
    "sun",
    "star",
    "wind",
    "rain",
    "fire",
    "earth",
    "water",
    "honour",
)


# ---------------------------------------------------------------------------- data and configs


def corpus_documents(count: int = 240, seed: int = 0) -> list[str]:
    """Deterministic documents of random sentences (30-900 characters)."""
    rng = random.Random(seed)
    documents = []
    for _ in range(count):
        sentences = [
            " ".join(rng.choices(WORDS, k=rng.randint(4, 14))).capitalize() + "."
            for _ in range(rng.randint(1, 10))
        ]
        documents.append(" ".join(sentences))
    return documents


def write_text_shards(out: Path, documents: Sequence[str], per_shard: int) -> list[Path]:
    """Text-only webdataset shards of ``documents`` (``per_shard`` samples each)."""
    from mmpretrain.data.shard_io import ShardWriter
    from mmpretrain.data.types import Sample, Segment

    with ShardWriter(out, max_samples=per_shard) as writer:
        for i, text in enumerate(documents):
            writer.write(Sample(f"doc{i:05d}", "reliability", [Segment("text", text=text)]))
    return writer.shards


def tiny_run_config(shards: Path, tokenizer: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    """A run config over text shards that steps in milliseconds; each shard lasts a few
    steps, so runs cross many shard switches (and epochs)."""
    config: dict[str, Any] = {
        "model": {
            "llm": {
                "name": "llama",
                "vocab_size": 320,
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_layers": 2,
                "num_heads": 4,
                "num_kv_heads": 2,
                "max_position_embeddings": 128,
            }
        },
        "data": {
            "sources": [{"format": "shards", "paths": [str(shards)]}],
            "tokenizer": {"name": "bpe", "path": str(tokenizer)},
            "buffer_docs": 8,
        },
        "train": {
            "max_steps": 16,
            "batch_size": 2,
            "seq_len": 64,
            "log_every": 1,
            "save_every": 3,
            "seed": 0,
        },
        "optim": {"lr": 3e-3, "warmup_steps": 2},
    }
    for section, values in sections.items():
        config[section] = {**config.get(section, {}), **values}
    return config


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def losses(run_dir: Path) -> list[float]:
    from mmpretrain.train.metrics import read_metrics

    return [record["loss"] for record in read_metrics(run_dir)]


def train_argv(config: Path, run_dir: Path, *extra: str) -> list[str]:
    return ["train", str(config), "--run-dir", str(run_dir), *extra]


def run_quietly(argv: Sequence[str]) -> tuple[int, str]:
    """``mmpt ARGV`` in-process; returns the exit code and everything it printed."""
    from mmpretrain.cli import main

    out = io.StringIO()
    with redirect_stdout(out), redirect_stderr(out):
        code = main(list(argv))
    return code, out.getvalue()


# ---------------------------------------------------------------------------- crash points


@dataclass(frozen=True)
class CrashPoint:
    """Where a crash child gets ``signum`` (SIGKILL: dies): at the ``nth`` call of hook
    ``where`` (sent by itself), or (``where == "timer"``) from the parent ``delay`` seconds
    after it started stepping (``times`` times, 50 ms apart)."""

    where: str
    nth: int = 1
    delay: float = 0.0
    signum: int = signal.SIGKILL
    times: int = 1

    def describe(self) -> str:
        name = "" if self.signum == signal.SIGKILL else f" {signal.Signals(self.signum).name}"
        return (f"timer {self.delay:.2f}s" if self.where == "timer" else f"{self.where} #{self.nth}") + name


_ARMED = {"signum": signal.SIGKILL, "times": 1}  # what the armed hook sends (set in the child)


def _die() -> None:
    for _ in range(_ARMED["times"]):
        os.kill(os.getpid(), _ARMED["signum"])
    if _ARMED["signum"] == signal.SIGKILL:
        time.sleep(60)  # not reached


def _counting(nth: int, before: bool, real: Callable[..., Any]) -> Callable[..., Any]:
    calls = {"n": 0}

    def hooked(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if before and calls["n"] == nth:
            _die()
        result = real(*args, **kwargs)
        if not before and calls["n"] == nth:
            _die()
        return result

    return hooked


def _half_json(nth: int, real: Callable[..., Any]) -> Callable[..., Any]:
    """``checkpoint._write_json`` that dies after writing half of the n-th file."""
    calls = {"n": 0}

    def hooked(path: Path, data: dict[str, Any]) -> None:
        calls["n"] += 1
        if calls["n"] == nth:
            text = json.dumps(data)
            with path.open("w", encoding="utf-8") as handle:
                handle.write(text[: len(text) // 2])
                handle.flush()
            _die()
        real(path, data)

    return hooked


def _slow_rmtree(nth: int, real: Callable[..., Any]) -> Callable[..., Any]:
    """``shutil.rmtree`` (as the checkpoint module calls it) that dies half-way through
    the n-th deletion of a checkpoint directory: the worst order, every file but a
    ``COMMITTED`` marker gone (rmtree's order is the directory's)."""
    calls = {"n": 0}

    def hooked(path: Any, *args: Any, **kwargs: Any) -> Any:
        target = Path(path)
        if target.name.startswith("step_") and target.is_dir():
            calls["n"] += 1
            if calls["n"] == nth:
                for file in sorted(p for p in target.rglob("*") if p.is_file()):
                    if file.name != "COMMITTED":
                        file.unlink()
                _die()
        return real(path, *args, **kwargs)

    return hooked


# hook name -> (module path, attribute, how): "before"/"after" the n-th call, or a factory
HOOKS: dict[str, tuple[str, str, str]] = {
    # mid-step
    "forward": ("mmpretrain.train.loop", "token_loss_sum", "before"),
    "after_backward": ("torch.nn.utils", "clip_grad_norm_", "before"),
    "after_optimizer_step": ("mmpretrain.train.loop", "kernels_on_step", "before"),
    # data: the n-th shard the text reader opens (shard switches and epoch wraps)
    "shard_open": ("mmpretrain.data.text_sources", "iter_shard_samples", "before"),
    # mid-checkpoint-write, in the order save_checkpoint does things
    "ckpt_start": ("mmpretrain.train.checkpoint", "_flat_tensors", "before"),
    "ckpt_tensors_written": ("torch.distributed.checkpoint", "save", "after"),
    "ckpt_half_state_json": ("mmpretrain.train.checkpoint", "_write_json", "half_json"),
    "ckpt_before_rename": ("mmpretrain.train.checkpoint.os", "replace", "before"),
    "ckpt_before_commit": ("mmpretrain.train.checkpoint", "_fsync_dir", "before_odd"),
    "ckpt_before_prune": ("mmpretrain.train.checkpoint", "prune_checkpoints", "before"),
    "ckpt_mid_prune": ("mmpretrain.train.checkpoint.shutil", "rmtree", "slow_rmtree"),
}
CHECKPOINT_HOOKS = tuple(name for name in HOOKS if name.startswith("ckpt_"))
STEP_HOOKS = ("forward", "after_backward", "after_optimizer_step")


def hook_owner(module_name: str) -> Any:
    """The object a hook patches: a module, or the ``os``/``shutil`` a module imported
    (``mmpretrain.train.checkpoint.os``: patched for everyone, counted by the hook)."""
    import importlib

    parent, _, last = module_name.rpartition(".")
    if last in ("os", "shutil"):
        return getattr(importlib.import_module(parent), last)
    return importlib.import_module(module_name)


def _install(point: CrashPoint) -> None:
    if point.where == "timer":
        return
    _ARMED.update(signum=point.signum, times=point.times)
    module_name, attribute, how = HOOKS[point.where]
    module = hook_owner(module_name)
    real = getattr(module, attribute)
    if how == "before":
        hooked = _counting(point.nth, True, real)
    elif how == "after":
        hooked = _counting(point.nth, False, real)
    elif how == "before_odd":  # _fsync_dir runs twice per save: after the rename, after COMMITTED
        hooked = _counting(2 * point.nth - 1, False, real)
    elif how == "half_json":
        hooked = _half_json(point.nth, real)
    else:
        hooked = _slow_rmtree(point.nth, real)
    setattr(module, attribute, hooked)


@dataclass
class ChildResult:
    """How a crash child ended."""

    killed: bool  # died of SIGKILL
    exit_code: int | None  # its exit code if it exited
    output: str
    seconds_after_signal: float | None = None  # from the parent's first signal to the end

    def describe(self) -> str:
        return "killed" if self.killed else f"exited {self.exit_code}"


def run_crash_child(
    argv: Sequence[str],
    point: CrashPoint,
    log: Path,
    started: Callable[[], bool] | None = None,
    timeout: float = 300.0,
    before_main: Callable[[], None] | None = None,
) -> ChildResult:
    """Start a child running ``mmpt ARGV`` with ``point`` armed, and wait for it.

    For a ``timer`` point the parent sends ``point.signum`` ``point.delay`` seconds after
    ``started()`` first holds (polled; e.g. "the first step was logged").
    """
    sys.stdout.flush()
    sys.stderr.flush()
    if before_main is None:
        pid = _spawn_child(argv, point, log)
    else:
        pid = _fork_child(argv, point, log, before_main)
    return _watch_child(pid, point, log, started, timeout)


_SPAWNED: dict[int, Any] = {}
_CHILD_BOOTSTRAP = """
import json, sys
import torch
torch.set_num_threads(1)
sys.path.insert(0, sys.argv[1])
from reliability_helpers import CrashPoint, _install
from mmpretrain.cli import main
_install(CrashPoint(**json.loads(sys.argv[2])))
code = main(json.loads(sys.argv[3]))
sys.stdout.flush()
sys.exit(code)
"""


def _spawn_child(argv: Sequence[str], point: CrashPoint, log: Path) -> int:
    """A fresh interpreter running ``mmpt ARGV`` with ``point`` armed (forking this
    process is unsafe once it has run torch: threads, autograd state)."""
    import dataclasses
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [
        sys.executable,
        "-c",
        _CHILD_BOOTSTRAP,
        str(Path(__file__).parent),
        json.dumps(dataclasses.asdict(point)),
        json.dumps(list(argv)),
    ]
    with log.open("w", encoding="utf-8") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    _SPAWNED[process.pid] = process  # reaped by _watch_child's waitpid; kept so Popen does not warn
    return process.pid


def _fork_child(argv: Sequence[str], point: CrashPoint, log: Path, before_main: Callable[[], None]) -> int:
    """A forked copy of this process running ``mmpt ARGV`` after ``before_main`` (limits
    that must be set in the child, e.g. RLIMIT_FSIZE)."""
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 1
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            sys.stdout = sys.stderr = open(fd, "w", buffering=1, closefd=False)  # noqa: SIM115
            before_main()
            _install(point)
            from mmpretrain.cli import main

            code = main(list(argv))
        except BaseException:
            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
            finally:
                os._exit(code)
    return pid


def _watch_child(
    pid: int, point: CrashPoint, log: Path, started: Callable[[], bool] | None, timeout: float
) -> ChildResult:
    """Wait for child ``pid``; a ``timer`` point's signal is sent from here."""
    deadline = time.monotonic() + timeout
    kill_at: float | None = None
    first_sent: float | None = None
    sent = 0
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        now = time.monotonic()
        if point.where == "timer" and sent < point.times:
            if kill_at is None and (started is None or started()):
                kill_at = now + point.delay
            if kill_at is not None and now >= kill_at:
                os.kill(pid, point.signum)
                first_sent = now if first_sent is None else first_sent
                sent += 1
                kill_at = now + 0.05
        if now > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"crash child {point.describe()} still running after {timeout} s")
        time.sleep(0.002)
    spawned = _SPAWNED.pop(pid, None)
    if spawned is not None:
        spawned.returncode = status  # waited for above
    output = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
    after = None if first_sent is None else time.monotonic() - first_sent
    if os.WIFSIGNALED(status):
        return ChildResult(os.WTERMSIG(status) == signal.SIGKILL, None, output, after)
    return ChildResult(False, os.WEXITSTATUS(status), output, after)


# ---------------------------------------------------------------------------- trials


def checkpoint_listing(run_dir: Path) -> list[str]:
    root = run_dir / "checkpoints"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def check_committed_are_complete(run_dir: Path) -> None:
    """Every committed checkpoint holds a readable state and tensor index (COMMITTED means
    complete, also while an old checkpoint is being deleted)."""
    from mmpretrain.train.checkpoint import committed_checkpoints

    for path in committed_checkpoints(run_dir):
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
        assert state["step"] == int(path.name.removeprefix("step_")), path
        shards = list((path / "tensors").glob("shard-*.safetensors"))  # one per rank of a sharded save
        index = (path / "tensors" / "model.safetensors.index.json").is_file()
        assert index or len(shards) == state.get("world_size", 1), path


@dataclass
class TrialResult:
    """One kill-and-resume trial."""

    point: CrashPoint
    killed: bool
    resumed_from: int | None  # step of the checkpoint the resume started from (None: fresh)
    exact: bool
    detail: str = ""


def kill_and_resume_trial(
    config: Path,
    run_dir: Path,
    reference: list[float],
    points: Sequence[CrashPoint],
) -> TrialResult:
    """Kill a run at each of ``points`` in turn (each kill resumes the previous one), then
    resume to the end and compare the losses with ``reference`` bitwise."""
    from mmpretrain.train.checkpoint import committed_checkpoints
    from mmpretrain.train.metrics import read_metrics

    killed_any = False
    for i, point in enumerate(points):
        argv = train_argv(config, run_dir, *(["--resume"] if i else []))

        def started() -> bool:
            return bool(read_metrics(run_dir))

        result = run_crash_child(argv, point, run_dir.parent / f"{run_dir.name}.child{i}.log", started)
        killed_any = killed_any or result.killed
        if not result.killed and result.exit_code != 0:
            return TrialResult(
                point, False, None, False, f"child {result.describe()}: {result.output[-2000:]}"
            )
        check_committed_are_complete(run_dir)
    committed = committed_checkpoints(run_dir)
    expected_from = int(committed[-1].name.removeprefix("step_")) if committed else None
    code, output = run_quietly(train_argv(config, run_dir, "--resume"))
    if code != 0:
        return TrialResult(points[-1], killed_any, expected_from, False, f"resume exited {code}: {output}")
    if expected_from is not None and f"resumed from {committed[-1]} (step {expected_from})" not in output:
        return TrialResult(points[-1], killed_any, expected_from, False, f"did not resume: {output}")
    got = losses(run_dir)
    root = run_dir / "checkpoints"
    leftovers = [name for name in checkpoint_listing(run_dir) if not (root / name / "COMMITTED").is_file()]
    exact = got == reference and not leftovers
    detail = "" if exact else f"losses {got} vs {reference}; uncommitted leftovers {leftovers}"
    return TrialResult(points[-1], killed_any, expected_from, exact, detail)


def landed_trial(
    config: Path, run_dir: Path, reference: list[float], points: Sequence[CrashPoint]
) -> tuple[TrialResult, list[CrashPoint]]:
    """:func:`kill_and_resume_trial`, redone in a fresh directory with the wall-clock
    delays halved (up to 3 times) when a timer kill came after the run had finished."""
    for attempt in range(4):
        attempt_dir = run_dir.with_name(f"{run_dir.name}-{attempt}")
        result = kill_and_resume_trial(config, attempt_dir, reference, points)
        if result.killed or not any(p.where == "timer" for p in points) or not result.exact:
            break
        points = [CrashPoint("timer", delay=p.delay / 2) if p.where == "timer" else p for p in points]
    return result, list(points)


def random_points(rng: random.Random, max_steps: int, save_every: int, count: int) -> Iterator[CrashPoint]:
    """``count`` crash points spread over the kinds: mid-step, mid-checkpoint, shard switch
    and wall-clock kills."""
    saves = max_steps // save_every
    kinds = ["step", "checkpoint", "shard", "timer"]
    for i in range(count):
        kind = kinds[i % len(kinds)] if i < len(kinds) else rng.choice(kinds)
        if kind == "step":
            yield CrashPoint(rng.choice(STEP_HOOKS), rng.randint(1, max_steps))
        elif kind == "checkpoint":
            hook = rng.choice(CHECKPOINT_HOOKS)
            # pruning starts once keep_last checkpoints exist
            low = 3 if hook == "ckpt_mid_prune" else 1
            yield CrashPoint(hook, rng.randint(1, max(saves - low, 1)))
        elif kind == "shard":
            yield CrashPoint("shard_open", rng.randint(2, 6))
        else:
            yield CrashPoint("timer", delay=rng.uniform(0.0, 0.6))


# ---------------------------------------------------------------------------- resources


class Hang(BaseException):
    """The code under test ran past its deadline (a BaseException, so that no ``except
    Exception`` on the way swallows it)."""


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Fail the test instead of hanging past ``seconds``."""

    def expired(signum: int, frame: Any) -> None:
        raise Hang(f"still running after {seconds} s: the code under test hangs")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _rss_kb(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


@contextmanager
def peak_rss_growth() -> Iterator[dict[str, float]]:
    """The peak resident memory (MB) above the starting point while the block runs: resets
    the kernel's high-water mark (/proc/self/clear_refs), then reads VmHWM. Counts every
    allocation (Pillow's and torch's buffers too, which tracemalloc does not see)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear:
            clear.write("5")
    except OSError as exc:
        _skip(f"cannot reset the peak RSS here ({exc}); Linux only")
    result: dict[str, float] = {}
    start = _rss_kb("VmRSS")
    yield result
    result["mb"] = (_rss_kb("VmHWM") - start) / 1024


def _skip(reason: str) -> None:
    import pytest

    pytest.skip(reason)
