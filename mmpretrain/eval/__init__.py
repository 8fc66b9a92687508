"""Few-shot evaluation (``mmpt eval``): task loaders, prompt templates, metrics, engine.

:mod:`mmpretrain.eval.types` holds the shared types (:class:`EvalExample`,
:class:`PromptTemplate`, :class:`TaskSpec`); :mod:`mmpretrain.eval.tasks` registers the
tasks in the ``tasks`` registry; :mod:`mmpretrain.eval.metrics` holds the metrics by name.
"""

from .types import EvalExample, PromptPart, PromptTemplate, TaskKind, TaskSpec

__all__ = ["EvalExample", "PromptPart", "PromptTemplate", "TaskKind", "TaskSpec"]
