"""Reliability and security benchmark: crash, stop, fill the disk, feed hostile input.

Phases (every run is a tiny Llama over 40 text shards, single process, CPU, 1 thread):

1. kill -9 + resume: a child process runs ``mmpt train`` and is SIGKILLed at
   a random point (mid-step, mid-checkpoint-write, at a shard switch, or after a random
   wall-clock delay); ``--resume`` must continue from the newest committed checkpoint and
   end with losses bitwise equal to an uninterrupted run's.
2. stop signals: SIGTERM, SIGINT, SIGUSR1 -> a final checkpoint, exit 0 within the grace
   period, exact resume.
3. disk full: ENOSPC injected in the tensor writer, in state.json and in the COMMITTED
   marker, and a real RLIMIT_FSIZE (EFBIG): exit 2 with one line, the previous checkpoint
   intact, exact resume.
4. hostile shards: the catalogue of tests/security/hostile_inputs.py (pickles, path and
   link members, decompression bombs, malformed records, a truncated shard) between good
   samples, read by the ShardReader (in-process and with 2 worker processes) and by
   ``mmpt data stats``: each must be skipped once with its reason, shard and key, and no
   good sample lost.
5. planted checkpoint pickles: payloads under 14 file names in every checkpoint of a run,
   then resume, eval (run and checkpoint), export (safetensors and hf), init_from.
6. CLI fuzz: random command lines and invalid ``--set`` values: exit 2 with one stderr
   line, or exit 0; never a traceback, never a run directory left.

    python scripts/bench_reliability.py --quick     # 4 kill trials, ~1-2 min on 2 cores
    python scripts/bench_reliability.py             # 20 kill trials (5 of them killed twice)

The last line printed is one JSON object: kill_trials, resumes_exact, corrupt_inputs_tried,
corrupt_inputs_handled, samples_lost, malicious_payloads_executed, and the rest.
"""

from __future__ import annotations

import argparse
import errno
import io
import json
import platform
import random
import resource
import shutil
import signal
import string
import sys
import tempfile
import time
from collections import Counter
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests" / "reliability"), str(REPO / "tests" / "security")]

import torch  # noqa: E402

torch.set_num_threads(1)  # forked runs and in-process runs must compute bitwise alike

from hostile_inputs import (  # noqa: E402
    classify,
    hostile_cases,
    pickle_payload,
    torch_payload_bytes,
    write_hostile_shards,
)
from reliability_helpers import (  # noqa: E402
    STEP_HOOKS,
    CrashPoint,
    check_committed_are_complete,
    corpus_documents,
    landed_trial,
    losses,
    random_points,
    run_crash_child,
    run_quietly,
    tiny_run_config,
    train_argv,
    write_text_shards,
    write_yaml,
)

MAX_STEPS = 16
SAVE_EVERY = 3
GRACE_S = 30.0


class Bench:
    def __init__(self, root: Path, quick: bool) -> None:
        from mmpretrain.data.tokenizer import train_bpe

        self.root = root
        self.quick = quick
        self.shards = root / "shards"
        write_text_shards(self.shards, corpus_documents(), per_shard=6)
        self.tokenizer = root / "tokenizer"
        train_bpe(corpus_documents(), vocab_size=300).save(self.tokenizer)
        self.rows: list[tuple[str, int, int, str]] = []
        self.report: dict[str, Any] = {}
        self.markers: list[Path] = []

    def config(self, name: str, **train: Any) -> Path:
        sections = {"train": {"max_steps": MAX_STEPS, "save_every": SAVE_EVERY, **train}}
        return write_yaml(
            self.root / f"{name}.yaml", tiny_run_config(self.shards, self.tokenizer, **sections)
        )

    def reference(self, config: Path, name: str) -> list[float]:
        code, output = run_quietly(train_argv(config, self.root / name))
        assert code == 0, output
        return losses(self.root / name)

    def marker(self, name: str) -> Path:
        path = self.root / "markers" / name
        path.parent.mkdir(exist_ok=True)
        self.markers.append(path)
        return path

    # ------------------------------------------------------------------ phases

    def kill_trials(self) -> None:
        config = self.config("kill")
        curve = self.reference(config, "kill-reference")
        rng = random.Random(16)
        count = 4 if self.quick else 20
        points = list(random_points(rng, MAX_STEPS, SAVE_EVERY, count))
        exact = killed = 0
        described = []
        started = time.perf_counter()
        for trial, point in enumerate(points):
            chain = [point]
            if not self.quick and trial % 5 == 4:
                chain.append(next(random_points(rng, MAX_STEPS, SAVE_EVERY, 1)))
            result, chain = landed_trial(config, self.root / f"kill{trial}", curve, chain)
            exact += result.exact
            killed += result.killed
            described.append("+".join(p.describe() for p in chain) + ("" if result.exact else " FAILED"))
            if not result.exact:
                print(f"trial {trial}: {result.detail}", file=sys.stderr)
        seconds = time.perf_counter() - started
        kinds = Counter(
            "mid-step"
            if p.where in STEP_HOOKS
            else "mid-checkpoint"
            if p.where.startswith("ckpt_")
            else p.where
            for p in points
        )
        self.rows.append(
            (
                "kill -9, then --resume",
                count,
                exact,
                f"losses bitwise equal; {dict(kinds)}; {seconds / count:.1f} s/trial",
            )
        )
        self.report.update(kill_trials=count, resumes_exact=exact, kills_landed=killed, kill_points=described)

    def signals(self) -> None:
        config = self.config("signals", max_steps=30, save_every=1000, batch_size=4)
        curve = self.reference(config, "signals-reference")
        ok, slowest = 0, 0.0
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            run_dir = self.root / f"signal-{signum.name}"

            def started(run_dir: Path = run_dir) -> bool:
                from mmpretrain.train.metrics import read_metrics

                return len(read_metrics(run_dir)) >= 3

            result = run_crash_child(
                train_argv(config, run_dir),
                CrashPoint("timer", signum=signum),
                run_dir.with_suffix(".log"),
                started,
            )
            seconds = result.seconds_after_signal or 0.0
            slowest = max(slowest, seconds)
            clean = result.exit_code == 0 and f"received {signum.name}: saved" in result.output
            code, _ = run_quietly(train_argv(config, run_dir, "--resume"))
            ok += clean and seconds < GRACE_S and code == 0 and losses(run_dir) == curve
        detail = f"final checkpoint, exit 0 within {slowest:.2f} s (grace {GRACE_S:g} s), exact resume"
        self.rows.append(("SIGTERM / SIGINT / SIGUSR1", 3, ok, detail))
        self.report.update(signal_trials=3, signal_clean=ok, signal_exit_s_max=round(slowest, 3))

    def disk_full(self) -> None:
        config = self.config("disk", max_steps=9)
        curve = self.reference(config, "disk-reference")

        def second_save(action: Any) -> Any:
            def arm() -> None:
                from mmpretrain.train import checkpoint as module

                real = module._flat_tensors
                calls = {"n": 0}

                def counting(*args: Any, **kwargs: Any) -> Any:
                    calls["n"] += 1
                    if calls["n"] == 2:
                        action(module)
                    return real(*args, **kwargs)

                module._flat_tensors = counting

            return arm

        def enospc_in(attribute: str) -> Any:
            def action(module: Any) -> None:
                def fail(*args: Any, **kwargs: Any) -> Any:
                    raise OSError(errno.ENOSPC, "No space left on device")

                if attribute == "tensors":
                    from torch.distributed.checkpoint import HuggingFaceStorageWriter

                    HuggingFaceStorageWriter.write_data = fail  # type: ignore[method-assign]
                elif attribute == "marker":
                    real_write_text = Path.write_text

                    def write_text(self: Path, *args: Any, **kwargs: Any) -> int:
                        if self.name == "COMMITTED":
                            fail()
                        return real_write_text(self, *args, **kwargs)

                    Path.write_text = write_text  # type: ignore[method-assign]
                else:
                    module._write_json = fail

            return action

        def file_size_limit(module: Any) -> None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))

        cases = {
            "ENOSPC tensors": enospc_in("tensors"),
            "ENOSPC state.json": enospc_in("state"),
            "ENOSPC COMMITTED": enospc_in("marker"),
            "RLIMIT_FSIZE": file_size_limit,
        }
        ok = 0
        for name, action in cases.items():
            run_dir = self.root / f"disk-{len(name)}-{ok}"
            result = run_crash_child(
                train_argv(config, run_dir),
                CrashPoint("timer", delay=1e9),
                run_dir.with_suffix(".log"),
                started=lambda: False,
                before_main=second_save(action),
            )
            errors = [line for line in result.output.splitlines() if line.startswith("error:")]
            clean = result.exit_code == 2 and len(errors) == 1 and "Traceback" not in result.output
            try:
                check_committed_are_complete(run_dir)
            except (AssertionError, OSError, ValueError):
                clean = False
            code, _ = run_quietly(train_argv(config, run_dir, "--resume"))
            ok += clean and code == 0 and losses(run_dir) == curve
        detail = "ENOSPC in 3 places + RLIMIT_FSIZE: one line, exit 2, checkpoint intact, exact resume"
        self.rows.append(("disk full during a save", len(cases), ok, detail))
        self.report.update(disk_full_trials=len(cases), disk_full_clean=ok)

    def hostile_shards(self) -> None:
        tried = handled = lost = 0
        groups: Counter[str] = Counter()
        for workers in (0, 2):
            result, escaped, cases = self._read_hostile(workers)
            tried += result["tried"]
            handled += result["handled"] - escaped
            lost += len(result["lost"])
            groups = Counter(case.group for case in cases)
            for problem in result["unhandled"]:
                print(f"unhandled: {problem}", file=sys.stderr)
        detail = f"{dict(groups)} + a truncated shard; reader with 0 and 2 workers; {lost} good samples lost"
        self.rows.append(("hostile shard samples", tried, handled, detail))
        self.report.update(corrupt_inputs_tried=tried, corrupt_inputs_handled=handled, samples_lost=lost)

    def _read_hostile(self, workers: int) -> tuple[dict[str, Any], int, list[Any]]:
        """One epoch of the hostile catalogue through the ShardReader, with every skip event."""
        from mmpretrain.data.error_budget import ErrorBudget
        from mmpretrain.data.reader import ReaderConfig, ShardReader

        root = self.root / f"hostile{workers}"
        outside = root / "outside"
        outside.mkdir(parents=True)
        cases = hostile_cases(self.marker(f"shards{workers}"), outside)
        shards = write_hostile_shards(root / "shards", cases)
        events: list[Any] = []
        real = ErrorBudget.record

        def record(budget: ErrorBudget, new: Any = (), good: int = 0) -> None:
            new = list(new)
            events.extend(e for e in new if e not in events)  # the next epoch meets them again
            real(budget, new, good)

        config = ReaderConfig(
            shards=[str(shards.directory)],
            shuffle_buffer=5,
            num_workers=workers,
            max_error_rate=1.0,
            max_errors=1000,
        )
        reader = ShardReader(config)

        def read() -> tuple[list[str], list[Any]]:
            keys = []
            for sample, state in reader.samples():
                keys.append(sample.key)
                if min(state.positions) >= reader.samples_per_epoch:
                    break
            return keys, events

        ErrorBudget.record = record  # type: ignore[method-assign]
        try:
            result = classify(shards, read)
        finally:
            ErrorBudget.record = real  # type: ignore[method-assign]
        escaped = sum(p.exists() for case in cases for p in case.escapes)
        return result, escaped, cases

    def planted_pickles(self) -> None:
        config = self.config("planted", max_steps=6, save_every=2)
        run = self.root / "planted"
        code, output = run_quietly(train_argv(config, run, "--set", "train.stop_after_steps=4"))
        assert code == 0, output
        names = (
            "optimizer.pt",
            "scheduler.pt",
            "rng_state.pth",
            "training_args.bin",
            "pytorch_model.bin",
            "model.pkl",
            "state.pickle",
            "trainer_state.pt",
            "tensors/.metadata",
            "tensors/__0_0.distcp",
            "tensors/pytorch_model.bin",
            "tensors/model.pt",
            "deepspeed/ds/mp_rank_00_model_states.pt",
            "../../tokenizer/payload.pkl",
        )
        marker = self.marker("checkpoints")
        planted = 0
        for checkpoint in (run / "checkpoints").glob("step_*"):
            for i, name in enumerate(names):
                path = (checkpoint / name).resolve()
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(torch_payload_bytes(marker) if i % 2 else pickle_payload(marker))
                planted += 1
        task = self.root / "task.jsonl"
        task.write_text(
            json.dumps(
                {
                    "segments": [{"text": "The king speaks."}],
                    "question": "Who?",
                    "answers": ["king"],
                    "choices": ["king", "queen"],
                }
            )
            + "\n",
            encoding="utf-8",
        )
        newest = run / "checkpoints" / "step_0000004"
        eval_args = ["--task", "interleaved_jsonl", "--set", f"path={task}", "--device", "cpu"]
        commands = {
            "resume": train_argv(run / "config.yaml", run, "--resume"),
            "eval run": ["eval", str(run), *eval_args, "--out", str(self.root / "e1.json")],
            "eval checkpoint": ["eval", str(newest), *eval_args, "--out", str(self.root / "e2.json")],
            "export safetensors": ["export", str(run), "--to", "safetensors", "--out", str(self.root / "x1")],
            "export hf": ["export", str(newest), "--to", "hf", "--out", str(self.root / "x2")],
            "init_from": train_argv(
                run / "config.yaml", self.root / "fresh", "--set", f"train.init_from={run}"
            ),
        }
        ok = 0
        for command in commands.values():
            code, _ = run_quietly(command)
            ok += code == 0 and not marker.exists()
        detail = f"{planted} payloads under {len(names)} names; resume, eval x2, export x2, init_from"
        self.rows.append(("planted checkpoint pickles", len(commands), ok, detail))
        self.report.update(malicious_payloads_planted=planted, checkpoint_readers_clean=ok)

    def cli_fuzz(self) -> None:
        from mmpretrain.cli import main

        rng = random.Random(0)
        tokens = [
            "train",
            "eval",
            "export",
            "data",
            "build",
            "stats",
            "config",
            "show",
            "schema",
            "list",
            "plot",
            "tokenizer",
            "--set",
            "--run-dir",
            "--resume",
            "--task",
            "--to",
            "--out",
            "--format",
            "--input",
            "--bogus",
            "-x",
            "0",
            "-1",
            "abc",
            "x=1",
            "train.seed=oops",
            "/nonexistent",
        ]
        keys = [
            "train.max_steps",
            "train.batch_size",
            "train.seq_len",
            "optim.lr",
            "optim.betas",
            "train.nan_policy",
            "model.llm.hidden_size",
            "data.buffer_docs",
            "distributed.backend",
        ]
        values = ["-1", "0", "abc", "[1, 2", "{a: 1}", "1e309", "nan", "~", "[]", "-0.5", "yes"]
        config = self.config("fuzz")
        tried = clean = left = 0
        for i in range(60 if self.quick else 300):
            run_dir = self.root / "fuzz-runs" / f"r{i}"
            if i % 2:
                argv = [rng.choice(tokens) for _ in range(rng.randint(0, 6))]
                argv += ["".join(rng.choices(string.ascii_letters + "-=./", k=rng.randint(1, 6)))] * (
                    i % 3 == 0
                )
            else:
                argv = train_argv(config, run_dir, "--set", f"{rng.choice(keys)}={rng.choice(values)}")
            out, err = io.StringIO(), io.StringIO()
            with redirect_stdout(out), redirect_stderr(err):
                code = main(argv)
            text = err.getvalue()
            if argv[:1] == ["train"] and code == 0:  # a valid value after all: not an invalid input
                shutil.rmtree(run_dir)
                continue
            tried += 1
            one_line = code == 0 or (code == 2 and text.count("\n") == 1 and text.startswith("error:"))
            left += run_dir.exists()
            clean += one_line and not run_dir.exists()
            if not one_line or run_dir.exists():
                print(f"fuzz: {argv} -> {code}: {text!r}", file=sys.stderr)
        self.rows.append(
            (
                "CLI fuzz (invalid inputs)",
                tried,
                clean,
                f"exit 2 + one stderr line (or exit 0); {left} run directories left",
            )
        )
        self.report.update(cli_inputs_tried=tried, cli_inputs_clean=clean)


def machine() -> str:
    model = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    return f"{model}, {os.cpu_count()} cores, torch {torch.__version__}, 1 thread"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="4 kill trials and a shorter fuzz (~1-2 min)")
    args = parser.parse_args()
    import logging

    logging.disable(logging.WARNING)  # skip messages of the hostile data are the point, not news
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_reliability_") as tmp:
        bench = Bench(Path(tmp), args.quick)
        for phase in (
            bench.kill_trials,
            bench.signals,
            bench.disk_full,
            bench.hostile_shards,
            bench.planted_pickles,
            bench.cli_fuzz,
        ):
            phase()
        executed = sum(marker.exists() for marker in bench.markers)
    seconds = time.perf_counter() - started
    print(f"\nreliability benchmark ({'quick' if args.quick else 'full'}) on {machine()}: {seconds:.0f} s\n")
    print(f"{'phase':32} {'trials':>6} {'ok':>5}  detail")
    for name, trials, ok, detail in bench.rows:
        print(f"{name:32} {trials:>6} {ok:>5}  {detail}")
    print(f"\nmalicious payloads executed: {executed}")
    report = {
        "mode": "quick" if args.quick else "full",
        **bench.report,
        "malicious_payloads_executed": executed,
        "seconds": round(seconds, 1),
        "machine": machine(),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
