"""`mmpt`: the command line (DESIGN.md section 8 is its contract).

``main(argv) -> int`` runs in-process (tests call it directly). User errors exit 2 with
one line on stderr and no traceback (``--debug`` shows it); internal errors exit 1.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from mmpretrain import __version__, data_cli, export_cli
from mmpretrain.errors import UserError

if TYPE_CHECKING:
    from mmpretrain.run_config import RunConfig

Handler = Callable[[argparse.Namespace], int]

LIST_KINDS = ("encoders", "connectors", "llms", "tokenizers", "kernels", "recipes", "tasks", "configs")


# ---------------------------------------------------------------------------- handlers


def _cmd_train(args: argparse.Namespace) -> int:
    from mmpretrain.config import load_config
    from mmpretrain.recipes import is_recipe

    if is_recipe(args.config):  # a YAML with `stages`: run every stage (mmpretrain/recipes/runner.py)
        from mmpretrain.recipes.runner import recipe_command

        return recipe_command(args)

    config: RunConfig = load_config(args.config, args.set)  # a bad config fails here, before any work
    from mmpretrain.train.loop import train

    run_dir = Path(args.run_dir or Path("runs") / Path(str(args.config)).stem)
    if args.nproc != 1:
        return _train_under_torchrun(args, config, run_dir)
    main_rank = os.environ.get("RANK", "0") == "0"  # under torchrun rank 0 owns the run directory
    new_dir = args.overwrite or not run_dir.exists() or (run_dir.is_dir() and not any(run_dir.iterdir()))
    new_dir = new_dir and main_rank
    try:
        result = train(
            config, run_dir, resume=args.resume, overwrite=args.overwrite, argv=["mmpt", *sys.argv[1:]]
        )
    except BaseException:
        if new_dir:
            _remove_if_nothing_trained(run_dir)
        raise
    if not main_rank:
        return 0
    if result.end_step == result.start_step:
        print(f"nothing to do: {run_dir} is at step {result.end_step} of {config.train.max_steps}")
        return 0
    loss = "n/a" if result.last_loss is None else f"{result.last_loss:.4f}"
    stopped = f"; stopped by {result.stopped_by}: continue with --resume" if result.stopped_by else ""
    print(
        f"trained steps {result.start_step}..{result.end_step} of {config.train.max_steps}: "
        f"last loss {loss}, {result.tokens_per_s:,.0f} tokens/s; run directory {run_dir}"
        + (f"; checkpoint {result.checkpoint}" if result.checkpoint else "")
        + stopped
    )
    return 0


def _train_under_torchrun(args: argparse.Namespace, config: RunConfig, run_dir: Path) -> int:
    """`mmpt train --nproc N`: the same command under torchrun with N local processes
    (stop signals are passed on; torchrun hands SIGUSR1 to the workers too)."""
    import signal
    import subprocess

    from mmpretrain.errors import ConfigError
    from mmpretrain.train.loop import _check_supported

    if args.nproc < 1:
        raise UserError(f"--nproc must be at least 1, got {args.nproc}")
    if config.distributed.backend == "none":
        raise ConfigError(
            f"--nproc {args.nproc} needs a distributed engine: add --set distributed.backend=fsdp2 "
            "(or ddp, deepspeed)"
        )
    _check_supported(config)
    if run_dir.is_dir() and any(run_dir.iterdir()) and not (args.resume or args.overwrite):
        raise UserError(
            f"run directory {run_dir} already exists: pass --resume to continue it, or --overwrite"
        )
    argv = ["train", str(args.config), "--run-dir", str(run_dir)]
    argv += [f"--set={item}" for item in args.set or []]
    argv += [flag for flag, on in (("--resume", args.resume), ("--overwrite", args.overwrite)) if on]
    argv += ["--debug"] if getattr(args, "debug", False) else []
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += [f"--nproc-per-node={args.nproc}"]
    # SIGUSR1 (a scheduler's preemption notice) reaches the ranks too, and they get time to save
    command += ["--signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1", "--shutdown-timeout=600"]
    command += ["-m", "mmpretrain.cli", *argv]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max((os.cpu_count() or 1) // args.nproc, 1)))
    process = subprocess.Popen(command, env=env)

    def forward(signum: int, frame: object) -> None:
        if signum != signal.SIGINT:  # a terminal's Ctrl-C reaches torchrun itself
            process.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
    try:
        return process.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _remove_if_nothing_trained(run_dir: Path) -> None:
    """A run that failed before its first logged step (a missing data path, a too small
    vocabulary, ...) leaves no half-made run directory that the next start would refuse."""
    import shutil

    from mmpretrain.train.checkpoint import checkpoints_root
    from mmpretrain.train.metrics import read_metrics

    if run_dir.is_dir() and not read_metrics(run_dir) and not checkpoints_root(run_dir).exists():
        shutil.rmtree(run_dir, ignore_errors=True)


def _cmd_eval(args: argparse.Namespace) -> int:
    from mmpretrain.eval_cli import eval_command

    return eval_command(args)


def _cmd_export(args: argparse.Namespace) -> int:
    return export_cli.export_command(args)


def _cmd_demo(args: argparse.Namespace) -> int:
    from mmpretrain.demo import run_demo

    return run_demo(Path(args.out), args.quick, verbosity=_verbosity(args))


def _cmd_plot(args: argparse.Namespace) -> int:
    from mmpretrain.plot import plot_command

    return plot_command(args)


def _cmd_list(args: argparse.Namespace) -> int:
    from mmpretrain.listing import format_listing

    print(format_listing(args.kind))
    return 0


def _cmd_tokenizer_train(args: argparse.Namespace) -> int:
    if args.kind == "speech_units":
        from mmpretrain.media_tokenizer_cli import train_speech_units_command

        return train_speech_units_command(args.input, args.config, args.out, args.overwrite, args.vocab_size)
    if args.kind == "vq":
        from mmpretrain.media_tokenizer_cli import train_vq_command

        return train_vq_command(args.input, args.config, args.out, args.overwrite, args.vocab_size)
    if args.config is not None:
        raise UserError("--config is for --kind vq and speech_units; a bpe tokenizer takes --vocab-size")
    from mmpretrain.tokenizer_cli import train_bpe_command

    return train_bpe_command(args.input, args.vocab_size, args.out, overwrite=args.overwrite)


def _cmd_tokenizer_decode(args: argparse.Namespace) -> int:
    from mmpretrain.media_tokenizer_cli import decode_command

    return decode_command(args.tokenizer_dir, args.ids, args.out)


def _cmd_config_schema(args: argparse.Namespace) -> int:
    from mmpretrain.config_schema import format_markdown, format_rows, reference_page, schema_rows
    from mmpretrain.errors import ConfigError
    from mmpretrain.run_config import RunConfig

    if args.markdown and not args.section:
        print(reference_page(), end="")  # docs/configuration.md
        return 0
    rows = schema_rows(RunConfig)
    if args.section:
        prefix = args.section.rstrip(".")
        rows = [r for r in rows if r.key == prefix or r.key.startswith((prefix + ".", prefix + "["))]
        if not rows:
            sections = sorted({r.key.split(".")[0].split("[")[0] for r in schema_rows(RunConfig)})
            raise ConfigError(f"unknown config section {args.section!r}; sections: {', '.join(sections)}")
    if args.markdown:
        print(format_markdown(rows), end="")
        return 0
    print("KEY  TYPE  DEFAULT  DESCRIPTION")
    print(format_rows(rows))
    return 0


def _cmd_config_show(args: argparse.Namespace) -> int:
    from mmpretrain.config import dump_config, load_config
    from mmpretrain.recipes import is_recipe

    if is_recipe(args.config):
        from mmpretrain.recipes.config import load_recipe, recipe_yaml

        recipe = load_recipe(args.config, args.set)
        print(recipe_yaml(recipe, args.stage), end="")
        return 0
    if args.stage is not None:
        raise UserError(f"--stage {args.stage}: {args.config} is not a recipe (it has no `stages`)")
    print(dump_config(load_config(args.config, args.set)), end="")
    return 0


# ---------------------------------------------------------------------------- parser


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the line breaks of descriptions and examples."""


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr (exit 2), like every other user error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {' '.join(message.split())} (see `{self.prog} --help`)\n")


def _command(
    subparsers: argparse._SubParsersAction,
    name: str,
    help_text: str,
    examples: str,
    parents: Sequence[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """A (sub)command's parser with its help line and an ``examples:`` epilog."""
    return subparsers.add_parser(
        name,
        help=help_text,
        description=help_text,
        epilog="examples:\n" + examples,
        formatter_class=_Formatter,
        parents=parents,
    )


def _add(
    subparsers: argparse._SubParsersAction,
    name: str,
    help_text: str,
    examples: str,
    handler: Handler,
    parents: Sequence[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    parser = _command(subparsers, name, help_text, examples, parents)
    parser.set_defaults(handler=handler)
    return parser


def _add_group(
    subparsers: argparse._SubParsersAction,
    name: str,
    help_text: str,
    examples: str,
    parents: Sequence[argparse.ArgumentParser],
) -> argparse._SubParsersAction:
    """A command with subcommands (`mmpt data build`, ...); returns their subparsers."""
    parser = _command(subparsers, name, help_text, examples, parents)
    return parser.add_subparsers(dest=f"{name}_command", metavar="SUBCOMMAND", required=True)


def build_parser() -> argparse.ArgumentParser:
    """The full `mmpt` argument parser."""
    common = _Parser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks of errors"
    )
    common.add_argument(
        "-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
        help="only results and errors: no progress bars or lines, warnings or log messages",
    )  # fmt: skip
    common.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
        help="more detail: library log messages (data skips, mixing) on stderr",
    )  # fmt: skip
    parser = _Parser(
        prog="mmpt",
        description="Pre-train multimodal language models (mmpretrain).",
        epilog=(
            "examples:\n"
            "  mmpt demo --quick\n"
            "  mmpt train tiny --run-dir runs/tiny\n"
            "  mmpt --quiet data build --format demo --out runs/demo-data   # only the summary\n"
            "  mmpt train tiny --verbose                # + library log messages on stderr\n"
            "  NO_COLOR=1 mmpt train tiny               # plain progress lines, no bar\n"
            "\n"
            "Results go to stdout, progress to stderr: a bar on a terminal, plain lines otherwise\n"
            "(and with NO_COLOR or TERM=dumb). Run `mmpt COMMAND --help` for a command's options\n"
            "and examples."
        ),
        formatter_class=_Formatter,
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"mmpretrain {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = [common]

    train = _add(
        sub,
        "train",
        "train a model from a config",
        (
            "  mmpt train tiny --run-dir runs/tiny\n"
            "  mmpt train configs/text/tiny.yaml --set optim.lr=3e-4 --set train.max_steps=50\n"
            "  mmpt train tiny --run-dir runs/tiny --resume\n"
            "  mmpt train tiny --nproc 2 --set distributed.backend=fsdp2"
        ),
        _cmd_train,
        p,
    )
    train.add_argument("config", help="YAML path or shipped config name (`mmpt list configs`)")
    train.add_argument("--run-dir", help="output directory (default: runs/<config name>)")
    train.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key"
    )
    train.add_argument("--resume", action="store_true", help="continue from the newest committed checkpoint")
    train.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    train.add_argument("--nproc", type=int, default=1, help="run under torchrun with N local processes")

    data_sub = _add_group(
        sub,
        "data",
        "build, inspect and count dataset shards",
        "  mmpt data build --format demo --out runs/demo-data\n"
        "  mmpt data inspect 'runs/demo-data/*.tar'\n"
        "  mmpt data stats 'runs/demo-data/*.tar' --json",
        p,
    )
    build = _add(
        data_sub,
        "build",
        "convert a dataset into shards (demo data needs no input)",
        (
            "  mmpt data build --format demo --out runs/demo-data\n"
            "  mmpt data build --format captions --input blip_laion_558k.json --images-dir images "
            "--out shards/llava\n"
            "  mmpt data build --format interleaved --input 'mmc4/docs_*.jsonl.zip' --images-dir mmc4/images "
            "--out shards/mmc4 --workers 8\n"
            "  mmpt data build --format asr --input LibriSpeech/train-clean-100 --out shards/librispeech\n"
            "  mmpt data build --format tts-interleaved --input corpus.jsonl --out shards/tts --tts-ratio 0.3"
        ),
        data_cli.data_build_command,
        p,
    )
    data_cli.add_build_arguments(build)
    inspect = _add(
        data_sub,
        "inspect",
        "print a human summary of shards",
        "  mmpt data inspect 'runs/demo-data/*.tar'\n"
        "  mmpt data inspect 'runs/demo-data/shard-{000000..000003}.tar' --limit 20",
        data_cli.data_inspect_command,
        p,
    )
    inspect.add_argument("shards", help="shard path, glob or brace pattern, or pipe:COMMAND")
    inspect.add_argument("--limit", type=int, default=5, help="samples to show (default 5)")
    stats = _add(
        data_sub,
        "stats",
        "count samples, skips and errors in shards",
        "  mmpt data stats 'runs/demo-data/*.tar' --json\n"
        "  mmpt data stats 'runs/demo-data/*.tar' --tokenizer runs/tiny/tokenizer",
        data_cli.data_stats_command,
        p,
    )
    stats.add_argument("shards", help="shard path, glob or brace pattern, or pipe:COMMAND")
    stats.add_argument("--tokenizer", help="count text tokens exactly with this tokenizer directory")
    stats.add_argument("--json", action="store_true", help="print only a JSON object on stdout")

    evaluate = _add(
        sub,
        "eval",
        "few-shot evaluation of a checkpoint",
        (
            "  mmpt eval runs/demo --task shapes_count --shots 0,4,8 --limit 100 --out results.json\n"
            "  mmpt eval runs/demo --task shapes_count,shapes_caption --shots 0,4,8 --demos rices\n"
            "  mmpt eval runs/demo/checkpoints/step_0000600 --task shapes_asr --batch-size 16"
        ),
        _cmd_eval,
        p,
    )
    evaluate.add_argument("checkpoint", help="run directory, checkpoint directory or saved model directory")
    evaluate.add_argument(
        "--task", required=True, help="task name (`mmpt list tasks`) or task file; several: comma-separated"
    )
    evaluate.add_argument("--shots", default="0", help="comma-separated shot counts (default 0)")
    evaluate.add_argument("--limit", type=int, help="evaluate the first N queries of each task")
    evaluate.add_argument("--out", help="results JSON (+ .md table, .png plot, .predictions.jsonl)")
    evaluate.add_argument(
        "--demos", choices=["random", "rices"], default="random", help="how demonstrations are chosen"
    )
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the random demonstrations")
    evaluate.add_argument("--batch-size", type=int, default=8, help="queries (or scored rows) per forward")
    evaluate.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if any)")
    evaluate.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="task option (file path, template); repeatable"
    )
    evaluate.add_argument(
        "--no-prefix-cache", action="store_true", help="run every prompt in full (slower; for checking)"
    )

    export = _add(
        sub,
        "export",
        "export a checkpoint for transformers or as safetensors",
        (
            "  mmpt export runs/tiny --to hf --out exported/tiny\n"
            "  mmpt export runs/vlm --to hf --out exported/vlm-llava --dtype bfloat16\n"
            "  mmpt export runs/omni/checkpoints/step_0000600 --to safetensors --out exported/omni "
            "--max-shard-size 2GB"
        ),
        _cmd_export,
        p,
    )
    export_cli.add_export_arguments(export)

    listing = _add(
        sub,
        "list",
        "list registered components and shipped configs",
        "  mmpt list\n  mmpt list llms\n  mmpt list configs",
        _cmd_list,
        p,
    )
    listing.add_argument("kind", nargs="?", choices=LIST_KINDS, help="only this kind")

    tok_sub = _add_group(
        sub,
        "tokenizer",
        "train and inspect tokenizers",
        "  mmpt tokenizer train --input shakespeare --vocab-size 1024 --out tok/\n"
        "  mmpt tokenizer decode vq/ --ids vq/sample_codes.json --out image.png",
        p,
    )
    tok_train = _add(
        tok_sub,
        "train",
        "train a BPE, VQ image or speech-unit tokenizer",
        (
            "  mmpt tokenizer train --input corpus.txt --vocab-size 4096 --out tok/\n"
            "  mmpt tokenizer train --input shakespeare --vocab-size 1024 --out tok-shakespeare/\n"
            "  mmpt tokenizer train --kind vq --config tokenizers/vq_tiny --input 'runs/demo-data/*.tar' "
            "--out vq/\n"
            "  mmpt tokenizer train --kind speech_units --config tokenizers/speech_units_tiny "
            "--input 'runs/demo-data/*.tar' --out units/"
        ),
        _cmd_tokenizer_train,
        p,
    )
    tok_train.add_argument(
        "--kind", choices=["bpe", "vq", "speech_units"], default="bpe", help="tokenizer kind"
    )
    tok_train.add_argument(
        "--input",
        required=True,
        help="training text: 'shakespeare', .jsonl, .parquet, .tar shards, or text files/dirs/globs",
    )
    tok_train.add_argument(
        "--vocab-size", type=int, help="learned vocabulary size (bpe: required; special tokens on top)"
    )
    tok_train.add_argument("--config", help="tokenizer config (vq, speech_units)")
    tok_train.add_argument("--out", required=True, help="output tokenizer directory")
    tok_train.add_argument(
        "--overwrite", action="store_true", help="write into a non-empty --out (replaces its tokenizer files)"
    )
    tok_decode = _add(
        tok_sub,
        "decode",
        "decode discrete codes back to media for inspection",
        "  mmpt tokenizer decode vq/ --ids vq/sample_codes.json --out image.png",
        _cmd_tokenizer_decode,
        p,
    )
    tok_decode.add_argument("tokenizer_dir", help="trained tokenizer directory")
    tok_decode.add_argument("--ids", required=True, help="file with token ids")
    tok_decode.add_argument("--out", required=True, help="output file (.png)")

    plot = _add(
        sub,
        "plot",
        "plot a run's curves as PNGs: loss vs tokens per stage, lr, throughput, data mix, few-shot",
        "  mmpt plot runs/demo/train\n  mmpt plot runs/a runs/b --out plots/",
        _cmd_plot,
        p,
    )
    plot.add_argument("run_dirs", nargs="+", help="run directories (training runs, recipe runs, demo runs)")
    plot.add_argument("--out", help="output directory (default: FIRST_RUN_DIR/plots)")

    config_sub = _add_group(
        sub,
        "config",
        "describe and resolve configs",
        "  mmpt config schema train\n  mmpt config show tiny --set optim.lr=1e-3",
        p,
    )
    schema = _add(
        config_sub,
        "schema",
        "print every config key with type, default and description",
        "  mmpt config schema\n  mmpt config schema train\n  mmpt config schema model.llm\n"
        "  mmpt config schema --markdown > docs/configuration.md   # regenerate the reference",
        _cmd_config_schema,
        p,
    )
    schema.add_argument("section", nargs="?", help="only keys under this section (e.g. optim, model.llm)")
    schema.add_argument(
        "--markdown",
        action="store_true",
        help="markdown tables; without SECTION the whole docs/configuration.md (built-in components only)",
    )
    show = _add(
        config_sub,
        "show",
        "print a config or recipe fully resolved (bases merged, overrides applied)",
        "  mmpt config show tiny --set optim.lr=1e-3\n  mmpt config show recipes/vlm_llava\n"
        "  mmpt config show recipes/vlm_llava --stage full   # the run config that stage trains with",
        _cmd_config_show,
        p,
    )
    show.add_argument("config", help="YAML path or shipped config name")
    show.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    show.add_argument("--stage", help="a recipe's stage: print the run config it trains with")

    demo = _add(
        sub,
        "demo",
        "build demo data, train a tiny image+speech+text model in stages, evaluate, export, plot",
        "  mmpt demo\n  mmpt demo --quick --out runs/demo-quick\n  mmpt --quiet demo    # only the summary",
        _cmd_demo,
        p,
    )
    demo.add_argument("--out", default="runs/demo", help="output directory (replaced if it holds a demo)")
    demo.add_argument(
        "--quick", action="store_true", help="a smaller run: the end-to-end smoke test (about 1-3 minutes)"
    )
    return parser


# ---------------------------------------------------------------------------- entry points


def main(argv: Sequence[str] | None = None) -> int:
    """Run `mmpt` with ``argv`` (default: sys.argv[1:]); returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help/--version exit 0, usage errors exit 2
        return exc.code if isinstance(exc.code, int) else 2
    debug = getattr(args, "debug", False)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        print("error: a command is missing (see `mmpt --help` and `mmpt COMMAND --help`)", file=sys.stderr)
        return 2
    try:
        with _verbosity_context(_verbosity(args)):
            return handler(args)
    except UserError as exc:
        if debug:
            traceback.print_exc()
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)  # always one line
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BaseException as exc:  # torch's CheckpointException derives from BaseException
        if not isinstance(exc, Exception) and type(exc).__name__ != "CheckpointException":
            raise
        if isinstance(exc, BrokenPipeError):
            raise  # a closed output pipe (`mmpt ... | head`): console_main ends quietly
        if debug:
            traceback.print_exc()
        cause = _root_cause(exc)
        if isinstance(cause, OSError) and cause.errno in _DISK_FULL:
            where = f" ({cause.filename})" if cause.filename else ""
            resume = "; committed checkpoints are intact: continue with --resume"
            after = resume if handler is _cmd_train else ""
            print(
                f"error: {cause.strerror or cause}{where}: free disk space (or raise the quota or "
                f"file-size limit) and run again{after}",
                file=sys.stderr,
            )
            return 2
        if isinstance(cause, RuntimeError) and str(cause).startswith("DataLoader worker"):
            # torch's SIGCHLD handler raises a worker's death wherever the main process is
            print(
                f"error: {cause}: out of memory? lower num_workers or shuffle_buffer in the "
                "data reader config; committed checkpoints are intact: continue with --resume",
                file=sys.stderr,
            )
            return 2
        if isinstance(cause, torch_oom_types()):
            print(
                f"error: out of memory: {' '.join(str(cause).split())[:200]}: lower train.batch_size or "
                "train.seq_len (raise train.grad_accum to keep the batch), or use train.precision=bf16, "
                "model.activation_checkpointing=true or more GPUs (distributed.backend=fsdp2); committed "
                "checkpoints are intact: continue with --resume",
                file=sys.stderr,
            )
            return 2
        print(
            f"internal error: {type(cause).__name__}: {' '.join(str(cause).split())} "
            "(run again with --debug for the traceback, and please report it)",
            file=sys.stderr,
        )
        return 1


def torch_oom_types() -> tuple[type[BaseException], ...]:
    """torch's out-of-memory exceptions (CUDA and others), if torch is imported."""
    torch = sys.modules.get("torch")
    oom = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    return (oom,) if isinstance(oom, type) else ()


def _verbosity(args: argparse.Namespace) -> int:
    """-1 with --quiet, 1 with --verbose, else 0."""
    if getattr(args, "quiet", False) and getattr(args, "verbose", False):
        raise UserError("--quiet and --verbose contradict each other: give one")
    return -1 if getattr(args, "quiet", False) else int(getattr(args, "verbose", False))


@contextlib.contextmanager
def _verbosity_context(level: int) -> Iterator[None]:
    """--verbose: the package's log messages (INFO) on stderr. --quiet: stderr (progress
    bars and lines, warnings, log messages) goes nowhere while the command runs; errors are
    still printed by :func:`main` afterwards, and results on stdout are kept (per-step
    training lines are not printed: :mod:`mmpretrain.terminal`)."""
    from mmpretrain import terminal

    with terminal.verbosity(level), _stream_context(level):
        yield


@contextlib.contextmanager
def _stream_context(level: int) -> Iterator[None]:
    """The stderr side of :func:`_verbosity_context`."""
    import logging
    import warnings

    if level > 0:
        logger = logging.getLogger("mmpretrain")
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        previous = logger.level
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        try:
            yield
        finally:
            logger.removeHandler(handler)
            logger.setLevel(previous)
    elif level < 0:
        with open(os.devnull, "w", encoding="utf-8") as sink, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with contextlib.redirect_stderr(sink):
                yield
    else:
        yield


# A full disk, an exhausted quota, a file-size limit (RLIMIT_FSIZE): the user's to fix.
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _root_cause(exc: BaseException) -> BaseException:
    """The error behind ``exc``: the first rank's failure inside a checkpoint exception
    (whose text is a whole traceback), or a disk-full OSError among its causes."""
    failures = getattr(exc, "failures", None)
    if isinstance(failures, dict) and failures:
        first = next(iter(failures.values()))
        exc = first[0] if isinstance(first, tuple) else first
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _DISK_FULL:
            return seen
        seen = seen.__cause__ or seen.__context__
    return exc


def console_main() -> None:
    """Console-script entry point (`mmpt`). A closed output pipe (`mmpt list | head`) ends
    quietly, as Unix tools do."""
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:
        # Point stdout at /dev/null so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    sys.exit(code)


if __name__ == "__main__":
    console_main()
