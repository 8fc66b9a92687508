"""The evaluation engine: prompts in, log-likelihoods and greedy generations out.

Prompts reach the model on the training path: text runs are tokenized with the run's
tokenizer (no special tokens added, no BOS, as in training documents), every media item is
preprocessed by its encoder and takes ``<begin> + n x <placeholder> + <end>`` positions
(:mod:`mmpretrain.data.layout`), and its projected features replace the placeholder
embeddings, as :meth:`MultimodalLM.embed` does.

Queries with the same demonstrations share a prefix. With ``prefix_cache=True`` the
prefix runs once and each batch of queries continues from a copy of its KV cache; media
features are cached by content hash. The naive path (``prefix_cache=False``) runs every
row in full; both give the same per-token log-likelihoods (fp32, atol 1e-4) and the same
generations, and the engine counts the tokens each forward processed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mmpretrain.data.decoders import DecodedSegment
from mmpretrain.data.layout import MediaTokenIds
from mmpretrain.data.tokenizer import TextTokenizer
from mmpretrain.errors import UserError
from mmpretrain.eval.cache import MediaCache, PrefixCache
from mmpretrain.eval.types import PromptPart
from mmpretrain.model.multimodal import MultimodalLM


@dataclass(frozen=True)
class TokenRun:
    """Token ids of a piece of prompt with its media: ``media[i] = (offset, content
    hash)`` says where item i's placeholders start."""

    ids: tuple[int, ...]
    media: tuple[tuple[int, str], ...] = ()

    def __len__(self) -> int:
        return len(self.ids)

    def __add__(self, other: TokenRun) -> TokenRun:
        shift = len(self.ids)
        return TokenRun(self.ids + other.ids, self.media + tuple((o + shift, k) for o, k in other.media))


@dataclass
class ForwardCounter:
    """Tokens processed by LLM forwards (padding not counted) and forward calls."""

    tokens: int = 0
    calls: int = 0


class Evaluator:
    """Scores and generates with one model; holds the media and prefix caches."""

    def __init__(
        self,
        model: MultimodalLM,
        tokenizer: TextTokenizer,
        processors: dict[str, Any],
        *,
        batch_size: int = 8,
        prefix_cache: bool = True,
        media_cache: bool | None = None,
    ) -> None:
        if batch_size < 1:
            raise UserError(f"--batch-size must be >= 1, got {batch_size}")
        self.model = model
        self.llm: Any = model.llm  # a transformers causal LM
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.batch_size = batch_size
        self.prefix_cache = prefix_cache
        self.media = MediaCache(
            model, processors, self.device, reuse=prefix_cache if media_cache is None else media_cache
        )
        self.media_ids = MediaTokenIds.from_tokenizer(tokenizer)
        # a generation ends at EOS or where the model starts a media item (the next demonstration)
        ids = self.media_ids
        self.stop_ids = {tokenizer.eos_id, *ids.begin.values(), *ids.placeholder.values(), *ids.end.values()}
        self.counter = ForwardCounter()
        self._prefix: tuple[TokenRun, PrefixCache] | None = None
        self._text_cache: dict[str, tuple[int, ...]] = {}

    # ------------------------------------------------------------------ prompts -> inputs

    def _text_ids(self, text: str) -> tuple[int, ...]:
        ids = self._text_cache.get(text)
        if ids is None:
            ids = tuple(self.tokenizer.encode(text))
            if len(self._text_cache) < 100_000:
                self._text_cache[text] = ids
        return ids

    def encode(self, parts: Sequence[PromptPart]) -> TokenRun:
        """Tokens of a prompt piece; its media are encoded (or found in the cache)."""
        segments = [p for p in parts if isinstance(p, DecodedSegment)]
        keys = iter(self.media.prepare(segments))
        ids: list[int] = []
        media: list[tuple[int, str]] = []
        for part in parts:
            if isinstance(part, str):
                ids.extend(self._text_ids(part))
                continue
            key = next(keys)
            entry = self.media.entry(key)
            modality = entry.modality
            ids.append(self.media_ids.begin[modality])
            media.append((len(ids), key))
            ids.extend([self.media_ids.placeholder[modality]] * entry.num_tokens)
            ids.append(self.media_ids.end[modality])
        return TokenRun(tuple(ids), tuple(media))

    def text(self, text: str) -> TokenRun:
        """Tokens of a text continuation (an answer)."""
        return TokenRun(self._text_ids(text))

    def _embed(self, runs: Sequence[TokenRun], left_pad: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings ``[B, W, D]`` of padded runs and their mask ``[B, W]`` (1 = token)."""
        width = max(len(r) for r in runs)
        ids = torch.full((len(runs), width), self.tokenizer.pad_id, dtype=torch.long)
        mask = torch.zeros((len(runs), width), dtype=torch.long)
        shifts = []
        for row, run in enumerate(runs):
            shift = width - len(run) if left_pad else 0
            ids[row, shift : shift + len(run)] = torch.tensor(run.ids, dtype=torch.long)
            mask[row, shift : shift + len(run)] = 1
            shifts.append(shift)
        embeds = self.llm.get_input_embeddings()(ids.to(self.device))
        rows, cols, values = [], [], []
        for row, run in enumerate(runs):
            for offset, key in run.media:
                features = self.media.entry(key).features
                start = shifts[row] + offset
                rows.append(torch.full((len(features),), row, dtype=torch.long))
                cols.append(torch.arange(start, start + len(features)))
                values.append(features)
        if values:
            index = (torch.cat(rows).to(self.device), torch.cat(cols).to(self.device))
            embeds = embeds.index_put(index, torch.cat(values).to(embeds.dtype))
        return embeds, mask.to(self.device)

    def _forward(
        self,
        embeds: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        past: Any = None,
        past_mask: torch.Tensor | None = None,
        keep: int = 0,
        counted: int | None = None,
    ) -> Any:
        """One LLM forward; ``mask`` covers the new positions, ``past_mask`` the cached
        ones (None: no cache or all valid). ``counted``: tokens to count as work (default:
        the new valid positions)."""
        full_mask = mask if past_mask is None else torch.cat([past_mask, mask], dim=1)
        self.counter.tokens += int(mask.sum()) if counted is None else counted
        self.counter.calls += 1
        return self.llm(
            inputs_embeds=embeds,
            attention_mask=full_mask,
            position_ids=positions,
            past_key_values=past,
            use_cache=True,
            logits_to_keep=keep,
        )

    @torch.no_grad()
    def _prefix_cache(self, prefix: TokenRun) -> PrefixCache:
        """The KV cache of ``prefix`` (the last one is kept: queries come grouped by prefix)."""
        if self._prefix is not None and self._prefix[0] == prefix:
            self.media.stats.prefix_reuses += 1
            return self._prefix[1]
        from transformers import DynamicCache

        embeds, mask = self._embed([prefix], left_pad=False)
        positions = torch.arange(len(prefix), device=self.device)[None]
        out = self._forward(embeds, mask, positions, DynamicCache(config=self.llm.config), keep=1)
        cache = PrefixCache(out.past_key_values, len(prefix), out.logits[0, -1].float())
        self._prefix = (prefix, cache)
        self.media.stats.prefix_runs += 1
        return cache

    # ------------------------------------------------------------------ scoring

    @torch.no_grad()
    def loglikelihoods(
        self, prefix: TokenRun, rows: Sequence[tuple[TokenRun, TokenRun]]
    ) -> list[torch.Tensor]:
        """Per-token log-likelihoods (float32, CPU) of each row's continuation after
        ``prefix + context``; rows are ``(context, continuation)``."""
        results: list[torch.Tensor] = []
        cached = self.prefix_cache and len(prefix) > 0
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start : start + self.batch_size]
            if cached:
                results.extend(self._loglik_cached(prefix, chunk))
            else:
                results.extend(self._loglik_full(prefix, chunk))
        return results

    def _loglik_full(self, prefix: TokenRun, rows: Sequence[tuple[TokenRun, TokenRun]]) -> list[torch.Tensor]:
        runs = [prefix + context + continuation for context, continuation in rows]
        starts = [len(prefix) + len(context) for context, _ in rows]
        if min(starts) == 0:
            raise UserError("a continuation with nothing before it cannot be scored")
        embeds, mask = self._embed(runs, left_pad=False)
        width = embeds.shape[1]
        positions = torch.arange(width, device=self.device)[None].expand(len(runs), -1)
        first = min(starts) - 1
        logits = self._forward(embeds, mask, positions, keep=width - first).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        out = []
        for row, (run, begin) in enumerate(zip(runs, starts, strict=True)):
            targets = torch.tensor(run.ids[begin:], device=self.device)
            predictors = torch.arange(begin - 1, len(run) - 1, device=self.device) - first
            out.append(logprobs[row, predictors, targets].cpu())
        return out

    def _loglik_cached(
        self, prefix: TokenRun, rows: Sequence[tuple[TokenRun, TokenRun]]
    ) -> list[torch.Tensor]:
        cache = self._prefix_cache(prefix)
        runs = [context + continuation for context, continuation in rows]
        starts = [len(context) for context, _ in rows]
        embeds, mask = self._embed(runs, left_pad=False)
        width = embeds.shape[1]
        positions = (cache.length + torch.arange(width, device=self.device))[None].expand(len(runs), -1)
        first = max(min(starts) - 1, 0)
        past_mask = mask.new_ones(len(runs), cache.length)
        out_model = self._forward(
            embeds, mask, positions, cache.expand(len(runs)), past_mask, keep=width - first
        )
        logprobs = torch.log_softmax(out_model.logits.float(), dim=-1)
        prefix_logprobs = torch.log_softmax(cache.last_logits, dim=-1)
        out = []
        for row, (run, begin) in enumerate(zip(runs, starts, strict=True)):
            targets = torch.tensor(run.ids[begin:], device=self.device)
            predictors = torch.arange(begin - 1, len(run) - 1, device=self.device)
            values = []
            if begin == 0:  # the first continuation token is predicted by the prefix's last position
                values.append(prefix_logprobs[targets[:1]])
                predictors, tail = predictors[1:], targets[1:]
            else:
                tail = targets
            values.append(logprobs[row, predictors - first, tail])
            out.append(torch.cat(values).cpu())
        return out

    # ------------------------------------------------------------------ generation

    @torch.no_grad()
    def generate(
        self,
        prefix: TokenRun,
        queries: Sequence[TokenRun],
        max_new_tokens: int,
        stop: Sequence[str] = ("\n",),
    ) -> list[str]:
        """Greedy continuations of ``prefix + query`` (KV cache), cut at the first stop
        string, EOS or media token (the model starting another demonstration), stripped."""
        texts: list[str] = []
        for start in range(0, len(queries), self.batch_size):
            ids = self._generate_ids(prefix, queries[start : start + self.batch_size], max_new_tokens, stop)
            texts.extend(self._finish(row, stop) for row in ids)
        return texts

    def _finish(self, ids: list[int], stop: Sequence[str]) -> str:
        ends = [i for i, token in enumerate(ids) if token in self.stop_ids]
        if ends:
            ids = ids[: ends[0]]
        text = self.tokenizer.decode(ids)
        for s in stop:
            if s and s in text:
                text = text[: text.index(s)]
        return text.strip()

    @torch.no_grad()
    def _generate_ids(
        self, prefix: TokenRun, queries: Sequence[TokenRun], max_new_tokens: int, stop: Sequence[str]
    ) -> list[list[int]]:
        from transformers import DynamicCache

        cached = self.prefix_cache and len(prefix) > 0
        if cached:
            entry = self._prefix_cache(prefix)
            runs, past = list(queries), entry.expand(len(queries))
            past_length = entry.length
        else:
            runs, past = [prefix + q for q in queries], DynamicCache(config=self.llm.config)
            past_length = 0
        embeds, mask = self._embed(runs, left_pad=True)
        past_mask = mask.new_ones(len(runs), past_length) if past_length else None
        positions = past_length + (mask.cumsum(dim=1) - 1).clamp(min=0)
        out = self._forward(embeds, mask, positions, past, past_mask, keep=1)
        attention = mask if past_mask is None else torch.cat([past_mask, mask], dim=1)
        generated: list[list[int]] = [[] for _ in runs]
        done = [False] * len(runs)
        embedding = self.llm.get_input_embeddings()
        for step in range(max_new_tokens):
            next_ids = out.logits[:, -1].argmax(dim=-1)
            for row, token in enumerate(next_ids.tolist()):
                if done[row]:
                    continue
                generated[row].append(token)
                if token in self.stop_ids or any(
                    s in self.tokenizer.decode(generated[row]) for s in stop if s
                ):
                    done[row] = True
            if all(done) or step == max_new_tokens - 1:
                break
            step_mask = attention.new_ones(len(runs), 1)
            positions = positions[:, -1:] + 1
            out = self._forward(
                embedding(next_ids[:, None]),
                step_mask,
                positions,
                out.past_key_values,
                attention,
                keep=1,
                counted=done.count(False),  # finished rows still step in the batch; not counted as work
            )
            attention = torch.cat([attention, step_mask], dim=1)
        return generated
