"""MultimodalLM: encoders -> connectors -> scatter into token embeddings -> LLM.

A text-only model is a MultimodalLM without encoders: same parameter names (``llm.*``),
same checkpoints, same kernel rules. Several encoders may serve one modality (their
features are concatenated along the channel dimension and share one connector).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from mmpretrain.connectors.base import Connector
from mmpretrain.data.types import MediaBatch, PackedBatch
from mmpretrain.encoders.base import Encoder
from mmpretrain.errors import ConfigError, DataFormatError
from mmpretrain.model.packed import packed_attention_kwargs


def _trainable(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


class MultimodalLM(nn.Module):
    """``MultimodalLM(llm, encoders, connectors)``; ``forward(batch) -> logits [B, L, V]``.

    ``encoders`` maps a name to an :class:`Encoder`; ``connectors`` maps a modality to
    the :class:`Connector` projecting the concatenated features of that modality's
    encoders to the LLM width.
    """

    def __init__(
        self,
        llm: nn.Module,
        encoders: dict[str, Encoder] | None = None,
        connectors: dict[str, Connector] | None = None,
    ) -> None:
        super().__init__()
        self.llm = llm
        self.encoders = nn.ModuleDict(encoders or {})
        self.connectors = nn.ModuleDict(connectors or {})
        hidden = llm.get_input_embeddings().embedding_dim  # type: ignore[operator]
        for modality in self.modalities():
            if modality not in self.connectors:
                raise ConfigError(
                    f"model.connectors has no entry for modality {modality!r} (model.encoders has)"
                )
            connector = self.connectors[modality]
            width = sum(e.out_dim for e in self.encoders_of(modality))
            if connector.in_dim != width or connector.out_dim != hidden:
                raise ConfigError(
                    f"connector {modality!r} maps {connector.in_dim} -> {connector.out_dim} but the encoders "
                    f"give {width} and the LLM takes {hidden}"
                )
        extra = set(self.connectors) - set(self.modalities())
        if extra:
            raise ConfigError(f"model.connectors has {sorted(extra)} but no encoder of that modality")

    @property
    def config(self) -> Any:
        """The LLM's transformers config (attention implementation, window, vocab)."""
        return self.llm.config

    def modalities(self) -> list[str]:
        """Modalities that have encoders, sorted."""
        return sorted({str(e.modality) for e in self.encoders.values()})

    def encoders_of(self, modality: str) -> list[Encoder]:
        """The encoders of ``modality`` in name order (the order features are concatenated)."""
        return [
            self.encoders[name] for name in sorted(self.encoders) if self.encoders[name].modality == modality
        ]

    def encode(self, media: MediaBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """LLM-space embeddings ``[N, T, D]`` and valid lengths of a batch of media items.
        Frozen encoders run under ``no_grad``."""
        encoders = self.encoders_of(media.modality)
        if not encoders:
            raise DataFormatError(
                f"the batch has {media.modality} items but the model has no {media.modality} encoder"
            )
        features, lengths = [], None
        for encoder in encoders:
            context = contextlib.nullcontext() if _trainable(encoder) else torch.no_grad()
            with context:
                out, out_lengths = encoder(media.inputs, media.sizes)
            if lengths is not None and not torch.equal(lengths, out_lengths):
                raise ConfigError(
                    f"the {media.modality} encoders give different token counts; they must agree"
                )
            features.append(out)
            lengths = out_lengths
        assert lengths is not None
        return self.connectors[media.modality](torch.cat(features, dim=-1), lengths)

    def embed(self, batch: PackedBatch) -> torch.Tensor:
        """Token embeddings with every media item's projected features at its span."""
        embeds = self.llm.get_input_embeddings()(batch.input_ids)  # type: ignore[operator]
        rows: list[torch.Tensor] = []
        cols: list[torch.Tensor] = []
        values: list[torch.Tensor] = []
        for media in batch.media.values():
            projected, lengths = self.encode(media)
            for i, (row, start, length) in enumerate(media.spans):
                if int(lengths[i]) != length:
                    key = media.keys[i] if i < len(media.keys) else f"item {i}"
                    raise DataFormatError(
                        f"sample {key!r}: its {media.modality} item has {length} placeholders but the "
                        f"encoder and connector give {int(lengths[i])} tokens: the data was packed for "
                        "another model (check the encoder/connector settings)"
                    )
                rows.append(torch.full((length,), row, dtype=torch.long))
                cols.append(torch.arange(start, start + length))
                values.append(projected[i, :length])
        if values:
            index = (torch.cat(rows).to(embeds.device), torch.cat(cols).to(embeds.device))
            embeds = embeds.index_put(index, torch.cat(values).to(embeds.dtype))
        return embeds

    def save_pretrained(self, directory: str, config: Any) -> Any:
        """Save config + weights (see :mod:`mmpretrain.model.pretrained`)."""
        from mmpretrain.model.pretrained import save_pretrained

        return save_pretrained(self, config, directory)

    @classmethod
    def from_pretrained(cls, directory: str) -> MultimodalLM:
        """Load a directory written by :meth:`save_pretrained`."""
        from mmpretrain.model.pretrained import from_pretrained

        return from_pretrained(directory)[0]

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        """Logits of the LLM on the packed batch (document-isolated attention)."""
        embeds = self.embed(batch)
        kwargs = packed_attention_kwargs(self.llm.config, batch, embeds.dtype)
        return self.llm(inputs_embeds=embeds, **kwargs).logits
