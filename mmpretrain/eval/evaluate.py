"""Evaluate a task at k shots: choose demonstrations, build prompts, group queries by
their demonstrations (one prefix each), score or generate with the :class:`Evaluator`,
and score the predictions with the task's metric."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from mmpretrain.errors import UserError
from mmpretrain.eval.engine import Evaluator, TokenRun
from mmpretrain.eval.prompt import RandomDemos, RicesDemos, build_prompt, has_images
from mmpretrain.eval.types import EvalExample, TaskSpec


@dataclass
class ShotResult:
    """One task at one shot count."""

    task: str
    shots: int
    metric: str
    score: float
    n: int
    seed: int
    demos: str
    """How demonstrations were chosen (``random``, ``rices``; ``none`` at 0 shots)."""
    seconds: float
    forward_tokens: int
    prefix_runs: int
    note: str = ""
    predictions: list[dict[str, Any]] = field(default_factory=list)

    @property
    def queries_per_s(self) -> float:
        return self.n / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        """The results-JSON entry (predictions left out: they go to their own file)."""
        return {
            "task": self.task,
            "shots": self.shots,
            "metric": self.metric,
            "score": self.score,
            "n": self.n,
            "seed": self.seed,
            "demos": self.demos,
            "note": self.note,
            "timing": {
                "seconds": round(self.seconds, 4),
                "queries_per_s": round(self.queries_per_s, 4),
                "forward_tokens": self.forward_tokens,
                "prefix_runs": self.prefix_runs,
            },
        }


Progress = Callable[[int], None]


def _image_embedder(evaluator: Evaluator) -> Callable[[Sequence[EvalExample]], list[torch.Tensor | None]]:
    """RICES features of examples: the mean of their images' unit-norm encoder features."""

    def embed(examples: Sequence[EvalExample]) -> list[torch.Tensor | None]:
        out: list[torch.Tensor | None] = []
        for start in range(0, len(examples), 256):
            chunk = examples[start : start + 256]
            images = [[s for s in e.media if s.kind == "image"] for e in chunk]
            flat = evaluator.media.encoder_embeddings([s for row in images for s in row])
            offset = 0
            for row in images:
                if not row:
                    out.append(None)
                    continue
                vector = torch.stack(flat[offset : offset + len(row)]).mean(dim=0)
                out.append(torch.nn.functional.normalize(vector, dim=0))
                offset += len(row)
            for example in chunk:  # lazily loaded media are decoded again if chosen as a demo
                example.release()
        return out

    return embed


def demo_selector(
    evaluator: Evaluator, task: TaskSpec, mode: str, seed: int
) -> tuple[RandomDemos | RicesDemos, str, str]:
    """The demonstration selector for ``mode``, the mode actually used, and a note."""
    pool = task.demos()
    if mode == "rices":
        if "image" not in evaluator.media.processors:
            return RandomDemos(pool, seed), "random", "rices needs an image encoder: random demonstrations"
        if not has_images(pool):
            return (
                RandomDemos(pool, seed),
                "random",
                "no images in the task: random demonstrations (rices ranks images)",
            )
        return RicesDemos(pool, _image_embedder(evaluator)), "rices", ""
    if mode != "random":
        raise UserError(f"--demos must be random or rices, got {mode!r}")
    return RandomDemos(pool, seed), "random", ""


def _grouped(keys: Sequence[tuple[str, ...]]) -> list[list[int]]:
    """Query indices grouped by their demonstrations' ids, groups in order of first appearance."""
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def _chunks(items: Sequence[int], size: int) -> Iterator[Sequence[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


PREENCODE_QUERIES = 64
"""Queries whose media are encoded together, in one batched encoder call."""


def _batches(
    window: Sequence[int], queries: Sequence[EvalExample], kind: str, size: int
) -> Iterator[list[int]]:
    """Consecutive queries per forward: ``size`` queries (generate) or as many as fit in
    ``size`` scored rows, one row per choice (classify; at least one query)."""
    batch: list[int] = []
    rows = 0
    for i in window:
        need = len(queries[i].choices or [None]) if kind == "classify" else 1
        if batch and rows + need > size:
            yield batch
            batch, rows = [], 0
        batch.append(i)
        rows += need
    if batch:
        yield batch


def _classify(
    evaluator: Evaluator,
    task: TaskSpec,
    prefix: TokenRun,
    contexts: Sequence[TokenRun],
    chunk: Sequence[int],
    queries: Sequence[EvalExample],
    predictions: list[str],
    choice_scores: list[list[float]],
) -> None:
    """Score every choice of the chunk's queries; the best one is the prediction."""
    rows, owners = [], []
    for i, context in zip(chunk, contexts, strict=True):
        choices = queries[i].choices
        if not choices:
            raise UserError(f"{task.name}: classification query {queries[i].id} has no choices")
        for choice in choices:
            rows.append((context, evaluator.text(task.template.continuation(choice))))
            owners.append(i)
    for i, values in zip(owners, evaluator.loglikelihoods(prefix, rows), strict=True):
        choice_scores[i].append(float(values.sum()))
    for i in chunk:
        choices = queries[i].choices or []
        best = max(range(len(choices)), key=lambda c: choice_scores[i][c])
        predictions[i] = choices[best]


def evaluate_task(
    evaluator: Evaluator,
    task: TaskSpec,
    shots: int,
    *,
    limit: int | None = None,
    demos: str = "random",
    seed: int = 0,
    progress: Progress | None = None,
) -> ShotResult:
    """Evaluate ``task`` at ``shots`` demonstrations per query and score it."""
    from mmpretrain.eval.metrics import score
    from mmpretrain.eval.metrics.vqa import postprocess_vqa_generation

    started = time.perf_counter()
    tokens_before, prefix_before = evaluator.counter.tokens, evaluator.media.stats.prefix_runs
    queries = task.queries()[:limit] if limit is not None else task.queries()
    if not queries:
        raise UserError(f"task {task.name} has no queries to evaluate")
    mode, note = "none", ""
    demo_sets: list[list[EvalExample]] = [[] for _ in queries]
    if shots > 0:
        selector, mode, note = demo_selector(evaluator, task, demos, seed)
        for i, query in enumerate(queries):
            demo_sets[i] = selector.select(query, shots)
            query.release()  # media are decoded again window by window, not all at once
    predictions: list[str] = [""] * len(queries)
    vqa = task.metric == "vqa_accuracy"
    choice_scores: list[list[float]] | None = [[] for _ in queries] if task.kind == "classify" else None
    for group in _grouped([tuple(d.id for d in demo_set) for demo_set in demo_sets]):
        for window in _chunks(group, PREENCODE_QUERIES):
            prompts = {i: build_prompt(task, demo_sets[i], queries[i]) for i in window}
            if evaluator.media.reuse:  # encode the window's query media in one batched call
                evaluator.media.prepare(
                    [p for i in window for p in prompts[i].query if not isinstance(p, str)]
                )
            for chunk in _batches(window, queries, task.kind, evaluator.batch_size):
                # cached: text and media come from the caches; naive: media encoded again per batch
                prefix = evaluator.encode(prompts[chunk[0]].prefix)
                contexts = [evaluator.encode(prompts[i].query) for i in chunk]
                if task.kind == "classify":
                    assert choice_scores is not None
                    _classify(evaluator, task, prefix, contexts, chunk, queries, predictions, choice_scores)
                else:
                    texts = evaluator.generate(prefix, contexts, task.max_new_tokens, task.template.stop)
                    for i, text in zip(chunk, texts, strict=True):  # VQA: OpenFlamingo's answer cut
                        predictions[i] = postprocess_vqa_generation(text) if vqa else text
                for i in chunk:
                    queries[i].release()
                    del prompts[i]
                if progress is not None:
                    progress(len(chunk))
    value = score(task.metric, predictions, queries, choice_scores)
    records = []
    for i, query in enumerate(queries):
        record: dict[str, Any] = {"id": query.id, "prediction": predictions[i], "answers": query.answers}
        if query.label is not None:
            record["label"] = query.label
        if choice_scores is not None:
            record["choice_scores"] = dict(zip(query.choices or [], choice_scores[i], strict=True))
        record["demos"] = [d.id for d in demo_sets[i]]
        records.append(record)
    return ShotResult(
        task=task.name,
        shots=shots,
        metric=task.metric,
        score=float(value),
        n=len(queries),
        seed=seed,
        demos=mode,
        seconds=time.perf_counter() - started,
        forward_tokens=evaluator.counter.tokens - tokens_before,
        prefix_runs=evaluator.media.stats.prefix_runs - prefix_before,
        note=note,
        predictions=records,
    )


def stderr_progress(total: int, label: str) -> tuple[Progress, Callable[[], None]]:
    """A progress bar on a live terminal, else a line at each quarter, nothing under
    --quiet (:class:`mmpretrain.terminal.StderrProgress`); returns ``(advance, close)``."""
    from mmpretrain.terminal import StderrProgress

    bar = StderrProgress(label, total)
    return bar.advance, bar.close
