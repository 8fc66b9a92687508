"""Few-shot evaluation from inside a training run (every N steps).

The training loop keeps its model, tokenizer and config; this runs the evaluation engine
on them without copying weights and puts everything back as it was (train/eval mode,
attention implementation, RNG state). The returned dict is flat, ready for the metrics
log: ``{"eval/shapes_count/0shot": 0.31, "eval/shapes_count/4shot": 0.45, ...}``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from mmpretrain.data.tokenizer import TextTokenizer
from mmpretrain.eval.engine import Evaluator
from mmpretrain.eval.evaluate import ShotResult, evaluate_task
from mmpretrain.eval.model_io import EVAL_ATTENTION
from mmpretrain.eval.types import TaskSpec
from mmpretrain.model.build import media_processors
from mmpretrain.model.multimodal import MultimodalLM


def _task(task: str | TaskSpec) -> TaskSpec:
    if isinstance(task, TaskSpec):
        return task
    from mmpretrain.eval.tasks import load_task

    return load_task(task)


def evaluate_during_training(
    model: MultimodalLM,
    tokenizer: TextTokenizer,
    cfg: Any,
    tasks: Sequence[str | TaskSpec],
    shots: Sequence[int] = (0,),
    limit: int | None = 32,
    *,
    demos: str = "random",
    seed: int = 0,
    batch_size: int = 8,
    results: list[ShotResult] | None = None,
) -> dict[str, float]:
    """Scores of ``tasks`` (registered names, task files or built specs) at each shot
    count on the first ``limit`` queries, keyed ``eval/<task>/<k>shot``.

    ``cfg`` is the run config (or its ``model`` section): it gives the media processors.
    Pass a list as ``results`` to also receive the full :class:`ShotResult` objects.
    """
    model_cfg = getattr(cfg, "model", cfg)
    processors = media_processors(model_cfg)
    specs = [_task(t) for t in tasks]
    was_training = model.training
    attention = getattr(model.llm.config, "_attn_implementation", EVAL_ATTENTION)
    rng = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    scores: dict[str, float] = {}
    model.eval()
    try:
        if attention != EVAL_ATTENTION:  # packed-batch attention kinds need plans the engine does not make
            model.llm.set_attn_implementation(EVAL_ATTENTION)  # type: ignore[operator]
        evaluator = Evaluator(model, tokenizer, processors, batch_size=batch_size)
        for spec in specs:
            for k in shots:
                result = evaluate_task(evaluator, spec, k, limit=limit, demos=demos, seed=seed)
                scores[f"eval/{spec.name}/{k}shot"] = result.score
                if results is not None:
                    results.append(result)
    finally:
        if attention != EVAL_ATTENTION:
            model.llm.set_attn_implementation(attention)  # type: ignore[operator]
        model.train(was_training)
        random.setstate(rng[0])
        np.random.set_state(rng[1])
        torch.set_rng_state(rng[2])
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
    return scores
