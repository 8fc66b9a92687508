"""What evaluation computes once and reuses: media features by content hash, and the KV
cache of a prompt prefix shared by many queries.

Few-shot prompts repeat the same demonstrations for query after query. :class:`MediaCache`
encodes each distinct media item once (keyed by a hash of its decoded content, so the same
picture under two ids is one entry) and keeps its LLM-space features, its position count
and its pooled encoder embedding (for RICES). :class:`PrefixCache` holds the transformers
KV cache of a prefix run once; :meth:`PrefixCache.expand` hands each batch of queries its
own copy, so the forward work per query drops from ``P + q + a`` to ``q + a`` tokens.
"""

from __future__ import annotations

import copy
import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch

from mmpretrain.data.decoders import DecodedSegment
from mmpretrain.data.types import MediaBatch
from mmpretrain.errors import DataFormatError
from mmpretrain.model.multimodal import MultimodalLM


def media_hash(segment: DecodedSegment) -> str:
    """A hash of a media segment's decoded content (pixels and size, or samples and rate)."""
    digest = hashlib.sha256(segment.kind.encode())
    if segment.kind == "image":
        if segment.image is None:
            raise DataFormatError("an image segment without an image")
        image = segment.image
        digest.update(f"{image.mode}:{image.size}".encode())
        digest.update(image.tobytes())
    elif segment.kind == "audio":
        if segment.audio is None:
            raise DataFormatError("an audio segment without audio")
        digest.update(f"{segment.sample_rate}:{segment.audio.dtype}:{segment.audio.shape}".encode())
        digest.update(segment.audio.tobytes())
    else:
        raise ValueError(f"media_hash: {segment.kind!r} is not a media segment")
    return digest.hexdigest()[:32]


@dataclass
class MediaEntry:
    """One distinct media item: its LLM positions and LLM-space features ``[n, D]``."""

    modality: str
    num_tokens: int
    features: torch.Tensor


@dataclass
class CacheStats:
    """Counters for reports and benchmarks."""

    media_encoded: int = 0
    media_hits: int = 0
    prefix_runs: int = 0
    prefix_reuses: int = 0


class MediaCache:
    """Media features of one model by content hash, the ``max_entries`` most recently
    used kept (the demonstrations of the current prefix are used at every batch, so they
    stay; a task's thousands of query images do not pile up in device memory). With
    ``reuse=False`` (the naive baseline) every :meth:`prepare` call encodes its items again."""

    def __init__(
        self,
        model: MultimodalLM,
        processors: dict[str, Any],
        device: torch.device,
        reuse: bool = True,
        max_entries: int = 1024,
    ) -> None:
        self.model = model
        self.reuse = reuse
        self.max_entries = max_entries
        self.processors = processors
        self.device = device
        self.entries: OrderedDict[str, MediaEntry] = OrderedDict()
        self.embeddings: dict[str, torch.Tensor] = {}
        self.stats = CacheStats()

    def _processor(self, segment: DecodedSegment) -> Any:
        processor = self.processors.get(segment.kind)
        if processor is None:
            have = ", ".join(sorted(self.processors)) or "none"
            raise DataFormatError(
                f"the task has {segment.kind} items but the model has no {segment.kind} encoder "
                f"(its encoders read: {have})"
            )
        return processor

    def _preprocess_groups(
        self, segments: list[tuple[str, DecodedSegment]]
    ) -> dict[tuple[str, tuple[int, ...]], list[tuple[str, torch.Tensor]]]:
        """Preprocessed inputs grouped by modality and shape (items of one group stack
        without padding, so each is encoded exactly as it would be alone)."""
        groups: dict[tuple[str, tuple[int, ...]], list[tuple[str, torch.Tensor]]] = {}
        for key, segment in segments:
            inputs = self._processor(segment).preprocess(segment)
            groups.setdefault((segment.kind, tuple(inputs.shape)), []).append((key, inputs))
        return groups

    @torch.no_grad()
    def prepare(self, segments: list[DecodedSegment]) -> list[str]:
        """Encode the items not seen before (batched by modality and shape); returns the
        content hash of every item, in order."""
        keys = [media_hash(s) for s in segments]
        todo: dict[str, DecodedSegment] = {}
        for key, segment in zip(keys, segments, strict=True):
            if key in todo or (self.reuse and key in self.entries):
                self.stats.media_hits += 1
                if key in self.entries:
                    self.entries.move_to_end(key)
            else:
                todo[key] = segment
        if not todo:
            return keys
        for (modality, _), items in self._preprocess_groups(list(todo.items())).items():
            processor = self.processors[modality]
            inputs = torch.stack([t for _, t in items]).to(self.device)
            batch = MediaBatch(modality, inputs, [], -1)
            projected, lengths = self.model.encode(batch)
            for i, (key, item) in enumerate(items):
                expected = processor.num_tokens(item)
                if int(lengths[i]) != expected:
                    raise DataFormatError(
                        f"a {modality} item gives {int(lengths[i])} tokens but its processor says "
                        f"{expected}: the encoder and connector configs disagree"
                    )
                self.entries[key] = MediaEntry(modality, expected, projected[i, :expected].detach())
                self.entries.move_to_end(key)
                self.stats.media_encoded += 1
        # evict the least recently used, never an item of this call (its features are about to be used)
        while len(self.entries) > max(self.max_entries, len(set(keys))):
            self.entries.popitem(last=False)
        return keys

    def entry(self, key: str) -> MediaEntry:
        """The entry of a prepared item."""
        return self.entries[key]

    @torch.no_grad()
    def encoder_embeddings(self, segments: list[DecodedSegment]) -> list[torch.Tensor]:
        """Each item's encoder output mean-pooled over its valid tokens (the encoders of
        its modality concatenated), L2-normalised, on the CPU: the RICES features."""
        keys = [media_hash(s) for s in segments]
        todo = {k: s for k, s in zip(keys, segments, strict=True) if k not in self.embeddings}
        for (modality, _), items in self._preprocess_groups(list(todo.items())).items():
            inputs = torch.stack([t for _, t in items]).to(self.device)
            pooled = []
            for encoder in self.model.encoders_of(modality):
                features, lengths = encoder(inputs, [])
                valid = torch.arange(features.shape[1], device=features.device)[None, :] < lengths[
                    :, None
                ].to(features.device)
                summed = (features * valid[..., None]).sum(dim=1)
                pooled.append(summed / valid.sum(dim=1, keepdim=True).clamp(min=1))
            vectors = torch.nn.functional.normalize(torch.cat(pooled, dim=-1).float(), dim=-1).cpu()
            for i, (key, _) in enumerate(items):
                self.embeddings[key] = vectors[i]
        return [self.embeddings[k] for k in keys]


@dataclass
class PrefixCache:
    """The KV cache of a prefix run once (batch 1) and the logits of its last position
    (they predict the first token after the prefix)."""

    cache: Any
    length: int
    last_logits: torch.Tensor
    reuses: int = field(default=0)

    def expand(self, rows: int) -> Any:
        """A private copy of the cache repeated for ``rows`` rows (the forward that
        continues from it appends to the copy, never to the shared prefix)."""
        self.reuses += 1
        cache = copy.deepcopy(self.cache)
        if rows > 1:
            cache.batch_repeat_interleave(rows)
        return cache
