"""The model card (``README.md``) of a native export: architecture, data mix, steps,
tokens and evaluation results, from the run directory when there is one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from mmpretrain.export.gather import ExportSource
from mmpretrain.model.multimodal import MultimodalLM


def _component(cfg: Any) -> str:
    """``name`` and its non-default settings, one line."""
    data = cfg.model_dump(mode="json", exclude_defaults=True)
    name = data.pop("name", getattr(cfg, "name", "?"))
    settings = ", ".join(f"{k}: {json.dumps(v)}" for k, v in data.items())
    return f"`{name}`" + (f" ({settings})" if settings else "")


def parameter_lines(model: MultimodalLM) -> list[str]:
    """Parameters per part (tied tensors counted once)."""
    parts = [("llm", model.llm)]
    parts += [(f"encoders.{name}", module) for name, module in model.encoders.items()]
    parts += [(f"connectors.{modality}", module) for modality, module in model.connectors.items()]
    lines = ["| part | parameters |", "|---|---|"]
    for name, module in parts:
        lines.append(f"| {name} | {sum(p.numel() for p in module.parameters()):,} |")
    lines.append(f"| total | {sum(p.numel() for p in model.parameters()):,} |")
    return lines


def architecture_lines(source: ExportSource, model: MultimodalLM) -> list[str]:
    cfg = source.model_config
    lines = [f"- LLM: {_component(cfg.llm)}"]
    lines += [f"- encoder `{name}`: {_component(enc)}" for name, enc in sorted(cfg.encoders.items())]
    lines += [f"- connector `{m}`: {_component(c)}" for m, c in sorted(cfg.connectors.items())]
    lines += [f"- media tokenizer `{m}`: {_component(t)}" for m, t in sorted(cfg.media_tokenizers.items())]
    for rule in cfg.kernels:
        lines.append(f"- kernel rule: `{json.dumps(rule.model_dump(mode='json', exclude_defaults=True))}`")
    if not cfg.kernels:
        lines.append("- kernels: none (every Linear is dense)")
    lines += ["", *parameter_lines(model)]
    return lines


def data_lines(source: ExportSource) -> list[str]:
    """The data section of the run config (sources, shard mix, tokenizer) and the tokens
    seen per source when the checkpoint recorded them."""
    run = source.run_config
    data = getattr(run, "data", None)
    if data is None:
        return ["No run config: the data mix is unknown."]
    dumped = data.model_dump(mode="json")
    keep: dict[str, Any] = {}
    if dumped.get("sources"):
        keep["sources"] = dumped["sources"]
    shards = dumped.get("shards") or {}
    if shards:
        keep["shards"] = {"shards": (shards.get("reader") or {}).get("shards"), "mix": shards.get("mix")}
        if shards.get("mix"):
            keep["shards"]["temperature"] = shards.get("temperature")
    keep["tokenizer"] = dumped.get("tokenizer")
    lines = ["```yaml", yaml.safe_dump({"data": keep}, sort_keys=False).rstrip(), "```"]
    seen = source.state.get("sources", {}).get("tokens") or {}
    if seen:
        lines += ["", "| source | tokens seen |", "|---|---|"]
        lines += [f"| {name} | {int(count):,} |" for name, count in sorted(seen.items())]
    return lines


def training_lines(source: ExportSource) -> list[str]:
    run = source.run_config
    train = getattr(run, "train", None)
    lines = []
    if source.step is not None:
        total = f" of {train.max_steps}" if train is not None else ""
        lines.append(f"- steps: {source.step:,}{total}")
    if source.tokens is not None:
        lines.append(f"- tokens: {source.tokens:,}")
    if train is not None:
        lines.append(
            f"- batch: {train.batch_size} x {train.grad_accum} sequences of {train.seq_len} tokens "
            "per rank and step"
        )
    optim = getattr(run, "optim", None)
    if optim is not None:
        lines.append(f"- optimizer: lr {optim.lr}, schedule {getattr(optim, 'schedule', '?')}")
    last = last_metrics(source.run_dir)
    if last:
        lines.append(f"- last logged loss: {last.get('loss', float('nan')):.4f} (step {last.get('step')})")
    return lines or ["Unknown (no run directory)."]


def last_metrics(run_dir: Path | None) -> dict[str, Any]:
    """The last line of ``metrics.jsonl`` with a loss."""
    if run_dir is None or not (run_dir / "metrics.jsonl").is_file():
        return {}
    last: dict[str, Any] = {}
    for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "loss" in record:
            last = record
    return last


def eval_results(run_dir: Path | None) -> list[dict[str, Any]]:
    """Evaluation entries in the run directory: ``mmpt eval --out`` reports saved there
    (JSON lists of ``task``/``shots``/``metric``/``score``) and the ``eval/...`` values the
    training hook logged in ``metrics.jsonl`` (latest per key)."""
    if run_dir is None:
        return []
    entries: list[dict[str, Any]] = []
    for path in sorted([*run_dir.glob("*.json"), *run_dir.glob("eval*/*.json")]):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, list):
            for item in data:
                if isinstance(item, dict) and {"task", "shots", "metric", "score"} <= set(item):
                    entries.append({**item, "file": path.name})
    logged: dict[str, tuple[int, float]] = {}
    if (run_dir / "metrics.jsonl").is_file():
        for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            for key, value in record.items() if isinstance(record, dict) else ():
                if key.startswith("eval/") and isinstance(value, (int, float)):
                    logged[key] = (int(record.get("step", 0)), float(value))
    for key, (step, value) in sorted(logged.items()):
        parts = key.split("/")
        task = parts[1] if len(parts) > 1 else key
        shots = parts[2].removesuffix("shot") if len(parts) > 2 else ""
        entries.append(
            {
                "task": task,
                "shots": shots,
                "metric": "",
                "score": value,
                "step": step,
                "file": "metrics.jsonl",
            }
        )
    return entries


def eval_lines(source: ExportSource) -> list[str]:
    entries = eval_results(source.run_dir)
    if not entries:
        return [
            "No evaluation results in the run directory "
            "(`mmpt eval CHECKPOINT --task ... --out RUN_DIR/eval/results.json`)."
        ]
    lines = ["| task | shots | metric | score | step | from |", "|---|---|---|---|---|---|"]
    for e in entries:
        score = e["score"]
        text = f"{score:.4f}" if isinstance(score, float) else str(score)
        lines.append(
            f"| {e['task']} | {e['shots']} | {e.get('metric', '')} | {text} "
            f"| {e.get('step', '')} | {e['file']} |"
        )
    return lines


def model_card(source: ExportSource, model: MultimodalLM, weights: str) -> str:
    """The README.md text."""
    name = (source.run_dir or source.path).name
    lines = [
        f"# {name}",
        "",
        f"A multimodal LM trained with mmpretrain, exported from `{source.describe()}`",
        f"({weights}).",
        "",
        "```python",
        "from mmpretrain.model.multimodal import MultimodalLM",
        "",
        'model = MultimodalLM.from_pretrained("THIS_DIRECTORY")   # tokenizer: THIS_DIRECTORY/tokenizer',
        "```",
        "",
        "## Architecture",
        "",
        *architecture_lines(source, model),
        "",
        "## Training",
        "",
        *training_lines(source),
        "",
        "## Data",
        "",
        *data_lines(source),
        "",
        "## Evaluation",
        "",
        *eval_lines(source),
        "",
        "## Files",
        "",
        "- `model_config.yaml`: the model config (`MultimodalLM.from_pretrained` builds it)",
        "- `config.yaml`: the run's full resolved config (when exported from a run)",
        "- `model.safetensors` or `model-0000i-of-0000n.safetensors` + `model.safetensors.index.json`",
        "- `tokenizer/`: the run's tokenizer (transformers `AutoTokenizer` loads it)",
        "- `export.json`: where the weights came from",
        "",
    ]
    return "\n".join(lines)
