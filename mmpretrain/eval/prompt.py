"""k-shot prompts: choose demonstrations and write them Flamingo-style around the query.

A k-shot prompt is ``demo_1 + sep + ... + demo_k + sep + query`` (:class:`PromptTemplate`
renders each one; the query ends right before its answer). Demonstrations come from the
task's demo split and never include the query: an example with the query's id or with
one of the query's media items (same decoded content) is skipped.

- ``random`` (:class:`RandomDemos`): one seeded shuffle of the demo pool; every query takes
  the first k pool examples that do not clash with it. Most queries therefore share the
  same demonstrations (and the prefix KV cache, see :mod:`mmpretrain.eval.cache`), the
  4-shot demonstrations are the first 4 of the 8-shot ones, and a seed names one draw.
- ``rices`` (:class:`RicesDemos`, Yang et al. 2022, as OpenFlamingo): the k pool examples
  whose images are most similar to the query's (cosine similarity of the model's own
  vision-encoder features, mean-pooled), ordered by ascending similarity so the most
  similar demonstration sits last, right before the query. Tasks without images fall back
  to random demonstrations (the result records this in its ``note``).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from mmpretrain.errors import UserError
from mmpretrain.eval.cache import media_hash
from mmpretrain.eval.types import EvalExample, PromptPart, PromptTemplate, TaskSpec

DEMO_MODES = ("random", "rices")


@dataclass(frozen=True)
class FewShotPrompt:
    """The demonstrations of one query and the prompt written from them: ``prefix`` (the
    rendered demonstrations, each followed by the separator; shared by every query with
    the same demonstrations) and ``query`` (the query, ending right before its answer)."""

    demos: tuple[EvalExample, ...]
    prefix: list[PromptPart]
    query: list[PromptPart]

    @property
    def demo_ids(self) -> tuple[str, ...]:
        return tuple(d.id for d in self.demos)


def demo_answer(task: TaskSpec, example: EvalExample) -> str:
    """The answer a demonstration shows: its label (classification) or first reference."""
    if task.kind == "classify" and example.label is not None:
        return example.label
    if not example.answers:
        raise UserError(f"{task.name}: demonstration {example.id} has no answer to show")
    return example.answers[0]


def build_prompt(task: TaskSpec, demos: Sequence[EvalExample], query: EvalExample) -> FewShotPrompt:
    """The prompt of ``query`` after ``demos`` (in the order given)."""
    template: PromptTemplate = task.template
    prefix: list[PromptPart] = []
    for demo in demos:
        for part in [*template.render(demo, demo_answer(task, demo)), template.separator]:
            if isinstance(part, str) and prefix and isinstance(prefix[-1], str):
                prefix[-1] += part
            elif not (isinstance(part, str) and not part):
                prefix.append(part)
    return FewShotPrompt(tuple(demos), prefix, template.render(query, None))


def _media_keys(example: EvalExample) -> set[str]:
    return {media_hash(s) for s in example.media}


class _Exclusion:
    """Whether a pool example would leak the query (same id or a shared media item)."""

    def __init__(self, query: EvalExample) -> None:
        self.id = query.id
        self._query = query
        self._keys: set[str] | None = None

    def clashes(self, candidate: EvalExample, candidate_keys: Callable[[EvalExample], set[str]]) -> bool:
        if candidate.id == self.id:
            return True
        if self._keys is None:
            self._keys = _media_keys(self._query)
        return bool(self._keys) and bool(self._keys & candidate_keys(candidate))


class RandomDemos:
    """Seeded random demonstrations, shared across queries (see the module docstring)."""

    mode = "random"

    def __init__(self, pool: Sequence[EvalExample], seed: int) -> None:
        self.pool = list(pool)
        self.order = list(range(len(self.pool)))
        random.Random(seed).shuffle(self.order)
        self._keys: dict[int, set[str]] = {}

    def _candidate_keys(self, example: EvalExample) -> set[str]:
        index = id(example)
        if index not in self._keys:
            self._keys[index] = _media_keys(example)
        return self._keys[index]

    def select(self, query: EvalExample, k: int) -> list[EvalExample]:
        """``k`` demonstrations for ``query`` (none of them the query)."""
        if k == 0:
            return []
        exclusion = _Exclusion(query)
        chosen: list[EvalExample] = []
        for i in self.order:
            candidate = self.pool[i]
            if not exclusion.clashes(candidate, self._candidate_keys):
                chosen.append(candidate)
                if len(chosen) == k:
                    return chosen
        raise UserError(
            f"the demo split has {len(self.pool)} examples: not enough for {k} demonstrations "
            f"other than query {query.id} (use fewer --shots)"
        )


class RicesDemos:
    """Retrieval-based in-context example selection by image similarity.

    ``embed(examples) -> [N, D]`` gives unit-norm features of examples (None rows for
    examples without images); the pool's are computed once.
    """

    mode = "rices"

    def __init__(
        self,
        pool: Sequence[EvalExample],
        embed: Callable[[Sequence[EvalExample]], list[torch.Tensor | None]],
    ) -> None:
        self.pool = list(pool)
        self.embed = embed
        vectors = embed(self.pool)
        self.index = [i for i, v in enumerate(vectors) if v is not None]
        if not self.index:
            raise UserError("RICES needs images in the demo split; it has none (use --demos random)")
        self.matrix = torch.stack([vectors[i] for i in self.index])  # type: ignore[misc]
        self._keys: dict[int, set[str]] = {}

    def _candidate_keys(self, example: EvalExample) -> set[str]:
        index = id(example)
        if index not in self._keys:
            self._keys[index] = _media_keys(example)
        return self._keys[index]

    def select(self, query: EvalExample, k: int) -> list[EvalExample]:
        """The ``k`` most similar pool examples, least similar first (most similar last)."""
        if k == 0:
            return []
        vector = self.embed([query])[0]
        if vector is None:
            raise UserError(f"query {query.id} has no image: RICES cannot rank demonstrations for it")
        similarity = self.matrix @ vector
        exclusion = _Exclusion(query)
        chosen: list[EvalExample] = []
        for row in torch.argsort(similarity, descending=True, stable=True).tolist():
            candidate = self.pool[self.index[row]]
            if not exclusion.clashes(candidate, self._candidate_keys):
                chosen.append(candidate)
                if len(chosen) == k:
                    return chosen[::-1]
        raise UserError(
            f"the demo split has {len(self.index)} examples with images: not enough for {k} "
            f"demonstrations other than query {query.id} (use fewer --shots)"
        )


def has_images(examples: Sequence[EvalExample], probe: int = 8) -> bool:
    """Whether the first ``probe`` examples carry images (RICES ranks by image features)."""
    return any(s.kind == "image" for e in list(examples)[:probe] for s in e.media)
