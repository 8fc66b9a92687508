"""Shards in, packed multimodal batches out, with an exact, resumable position.

:class:`ShardReader` (or a :class:`MixedReader` over several weighted datasets) yields
decoded samples with the reader state after each one; each
sample becomes a :class:`MediaDocument` (text tokenized, every media item preprocessed
by its modality's :class:`MediaProcessor`, which also says how many LLM positions it
takes); :class:`MediaPacker` packs rounds of documents. The stream state is the reader
state at the start of the current packing round, the absolute document index of that
round, and the packs already emitted from it: resuming re-reads the round and skips
those packs, so a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeAlias

import torch
from pydantic import Field, model_validator

from mmpretrain.config import ConfigModel
from mmpretrain.data.decoders import DecodedSample, DecodedSegment
from mmpretrain.data.layout import (
    LossMask,
    MediaDocument,
    MediaItem,
    MediaTokenIds,
    NoLossTokens,
    Part,
    layout_batch,
)
from mmpretrain.data.media_packing import MediaPacker, PackBudget
from mmpretrain.data.media_vocab import MediaCodes
from mmpretrain.data.mixing import MixedReader, MixSourceConfig, MixState, check_mix
from mmpretrain.data.packing import PackerState
from mmpretrain.data.reader import ReaderConfig, ReaderState, ShardReader
from mmpretrain.data.skips import SkipCounter
from mmpretrain.data.tokenizer import TextTokenizer
from mmpretrain.data.types import PackedBatch
from mmpretrain.errors import ConfigError, DataFormatError

AnyReaderState: TypeAlias = ReaderState | MixState
"""The state of a :class:`ShardReader` or of a :class:`MixedReader`."""


class MediaProcessor(Protocol):
    """What the pipeline needs from an encoder (+ connector) for one modality."""

    modality: str

    def preprocess(self, segment: DecodedSegment) -> torch.Tensor:
        """The encoder's input tensor for one decoded media segment."""
        ...

    def num_tokens(self, inputs: torch.Tensor) -> int:
        """LLM positions of the item: ``connector.num_tokens(encoder.num_tokens(item))``."""
        ...


@dataclass(frozen=True)
class StandInImageProcessor:
    """Resize to ``size`` x ``size`` uint8 pixels (encoders normalise in their forward, as
    the real ones do); ``(size / patch)**2`` tokens. Stands in for an encoder's own
    preprocessing in data tests and benchmarks."""

    size: int = 32
    patch: int = 8
    modality: str = "image"

    def preprocess(self, segment: DecodedSegment) -> torch.Tensor:
        """[3, size, size] uint8 tensor."""
        assert segment.image is not None
        image = segment.image if segment.image.mode == "RGB" else segment.image.convert("RGB")
        image = image.resize((self.size, self.size))
        pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(self.size, self.size, 3)
        return pixels.permute(2, 0, 1).contiguous()

    def num_tokens(self, inputs: torch.Tensor) -> int:
        """Patches of the image."""
        return (inputs.shape[-1] // self.patch) * (inputs.shape[-2] // self.patch)


@dataclass(frozen=True)
class StandInAudioProcessor:
    """Mono 16 kHz waveform as is; ``tokens_per_second`` positions per second (Whisper
    + a 4x frame stack gives 12.5). Stands in until the model issue brings encoders."""

    tokens_per_second: float = 12.5
    modality: str = "audio"

    def preprocess(self, segment: DecodedSegment) -> torch.Tensor:
        """[samples] float tensor (resampled to 16 kHz when needed)."""
        assert segment.audio is not None and segment.sample_rate
        wave = torch.from_numpy(segment.audio.astype("float32", copy=False))
        if segment.sample_rate != 16000:
            wave = torch.nn.functional.interpolate(
                wave[None, None], scale_factor=16000 / segment.sample_rate, mode="linear"
            )[0, 0]
        return wave

    def num_tokens(self, inputs: torch.Tensor) -> int:
        """Positions for the clip's duration."""
        return max(1, math.ceil(inputs.shape[-1] / 16000 * self.tokens_per_second))


class MediaDataConfig(ConfigModel):
    """Interleaved image-text-speech training data from shards."""

    reader: ReaderConfig | None = None
    """Shards and how to read them (shuffle, workers, limits, error budget); or use `mix`."""
    mix: list[MixSourceConfig] = Field(default_factory=list)
    """Several datasets mixed by weight (instead of `reader`): each document's source is
    drawn with probability proportional to weight ** (1 / temperature)."""
    temperature: float = Field(1.0, gt=0)
    """Mixing temperature: 1 = the weights as given, larger flattens towards uniform."""
    buffer_docs: int = Field(512, gt=0)
    """Documents packed together per round."""
    max_images_per_pack: int | None = Field(8, gt=0)
    """At most this many images in one packed sequence (None: no limit)."""
    max_audio_seconds_per_pack: float | None = Field(None, gt=0)
    """At most this much audio in one packed sequence (None: no limit)."""
    loss_on_text_before_first_media: bool = True
    """False: no loss on a document's text before its first media item (e.g. a prompt)."""
    loss_on_media_codes: bool = True
    """Early fusion (model.media_tokenizers): train on predicting the media code tokens
    and their begin/end markers (False: the model reads them without loss on them)."""

    @model_validator(mode="after")
    def _one_reader(self) -> MediaDataConfig:
        if (self.reader is None) == (not self.mix):
            raise ValueError("set exactly one of reader (one dataset) and mix (several weighted datasets)")
        check_mix(self.mix, self.temperature)
        return self


@dataclass(frozen=True)
class MediaStreamState:
    """Reader state (one dataset's or a mix's) at the start of the current packing round,
    that round's absolute document index, and the packs already emitted from it."""

    reader: AnyReaderState | None = None
    round_start: int = 0
    emitted: int = 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form for checkpoints (``reader_kind`` says which reader state it holds)."""
        reader = self.reader.as_dict() if self.reader is not None else None
        kind = "mix" if isinstance(self.reader, MixState) else "shards"
        return {
            "reader_kind": kind,
            "reader": reader,
            "round_start": self.round_start,
            "emitted": self.emitted,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MediaStreamState:
        """Inverse of :meth:`as_dict`."""
        saved = data.get("reader")
        reader: AnyReaderState | None = None
        if saved is not None:
            mixed = data.get("reader_kind", "shards") == "mix"
            reader = MixState.from_dict(saved) if mixed else ReaderState.from_dict(saved)
        return cls(reader, int(data["round_start"]), int(data["emitted"]))


@dataclass(frozen=True)
class DocumentLoss:
    """Loss rules a document applies itself (early fusion: code runs look like text to
    the layout, so it cannot tell text before the first media item)."""

    text_before_first_media: bool = True
    media_codes: bool = True


def to_media_document(
    sample: DecodedSample,
    tokenizer: TextTokenizer,
    processors: dict[str, MediaProcessor],
    codes: MediaCodes | None = None,
    loss: DocumentLoss | None = None,
) -> MediaDocument:
    """Tokenize text (EOS at the end), preprocess media; audio transcripts stay out of
    the token stream (a paired text segment carries them when the data wants them).

    A modality that ``codes`` handles (early fusion) becomes text-like tokens
    ``[begin] + codes + [end]``, without loss when ``loss.media_codes`` is False. With
    ``loss`` given, text before the first media item or code run is wrapped in
    :class:`NoLossTokens` here when ``loss.text_before_first_media`` is False (the layout
    then gets ``LossMask()``, since it only sees media items).
    """
    parts: list[Part] = []
    seen_media = False
    for segment in sample.segments:
        if segment.kind == "text":
            tokens = tokenizer.encode(segment.text or "")
            masked = loss is not None and not loss.text_before_first_media and not seen_media
            parts.append(tokens if segment.loss and not masked else NoLossTokens(tokens))
            continue
        seen_media = True
        if codes is not None and codes.handles(segment.kind):
            try:
                run = codes.token_ids(segment)
            except ValueError as exc:
                raise DataFormatError(f"sample {sample.key!r} ({sample.shard}): {exc}") from None
            parts.append(run if loss is None or loss.media_codes else NoLossTokens(run))
            continue
        processor = processors.get(segment.kind)
        if processor is None:
            raise KeyError(segment.kind)
        inputs = processor.preprocess(segment)
        seconds = (
            len(segment.audio) / segment.sample_rate
            if segment.audio is not None and segment.sample_rate
            else 0.0
        )
        parts.append(MediaItem(segment.kind, processor.num_tokens(inputs), inputs, seconds))
    parts.append([tokenizer.eos_id])
    return MediaDocument(sample.key, parts)


class MediaBatchStream:
    """Endless packed multimodal batches of ``batch_size`` x ``seq_len`` for one rank."""

    def __init__(
        self,
        cfg: MediaDataConfig,
        tokenizer: TextTokenizer,
        processors: dict[str, MediaProcessor],
        seq_len: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        codes: MediaCodes | None = None,
    ) -> None:
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.processors = processors
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.reader: ShardReader | MixedReader
        if cfg.reader is not None:
            self.reader = ShardReader(cfg.reader, rank=rank, world_size=world_size, seed=seed)
        else:
            self.reader = MixedReader(cfg.mix, cfg.temperature, rank=rank, world_size=world_size, seed=seed)
        budget = PackBudget(cfg.max_images_per_pack, cfg.max_audio_seconds_per_pack)
        self.packer = MediaPacker(seq_len=seq_len, budget=budget, buffer_docs=cfg.buffer_docs, seed=seed)
        self.loss_mask = LossMask(cfg.loss_on_text_before_first_media)
        self.codes = codes
        # early fusion: documents apply the loss rules themselves (code runs are text to the layout)
        self.document_loss = (
            DocumentLoss(cfg.loss_on_text_before_first_media, cfg.loss_on_media_codes) if codes else None
        )
        self.layout_loss = LossMask() if codes else self.loss_mask
        self.ids = MediaTokenIds.from_tokenizer(tokenizer)
        # Documents whose media the model has no encoder for are skipped by design (a speech
        # LM on mixed shards); unpackable ones (an item longer than seq_len, ...) too, but if
        # most are, the model and data do not fit: stop with the reason instead of going on.
        self.skips = SkipCounter(max_skips=None, name="media documents")
        self.unpackable = SkipCounter(max_skips=None, max_fraction=0.5, name="media documents (unpackable)")

    def _fits(self, document: MediaDocument) -> str | None:
        """Why a document can never be packed (None if it can)."""
        for part in document.parts:
            if isinstance(part, MediaItem) and part.length > self.seq_len:
                return (
                    f"a {part.modality} item takes {part.length} positions, more than seq_len {self.seq_len}"
                )
            limit = self.cfg.max_audio_seconds_per_pack
            if isinstance(part, MediaItem) and limit is not None and part.seconds > limit:
                return f"an audio item of {part.seconds:.1f} s exceeds max_audio_seconds_per_pack {limit}"
        return None

    def _reader_samples(self, state: AnyReaderState | None) -> Iterator[tuple[DecodedSample, AnyReaderState]]:
        """The reader's samples from ``state`` (refusing a state of the other reader kind)."""
        if isinstance(self.reader, MixedReader):
            if state is not None and not isinstance(state, MixState):
                raise DataFormatError(
                    "the saved data state is of a single dataset (data.shards.reader) but the config "
                    "mixes datasets (data.shards.mix): resume with the config the run started with"
                )
            return self.reader.samples(state)
        if state is not None and not isinstance(state, ReaderState):
            raise DataFormatError(
                "the saved data state is of a mix (data.shards.mix) but the config reads one dataset "
                "(data.shards.reader): resume with the config the run started with"
            )
        return self.reader.samples(state)

    def _documents(
        self, state: AnyReaderState | None, marks: dict[int, AnyReaderState], first: int
    ) -> Iterator[MediaDocument]:
        """Documents from ``state`` on; ``marks[n]`` = reader state before document n. With
        a mix, each document's ``source`` is its mix source name."""
        mixed = isinstance(self.reader, MixedReader)
        number = first
        marks[number] = state or self.reader.initial_state()
        for sample, after in self._reader_samples(state):
            try:
                document = to_media_document(
                    sample, self.tokenizer, self.processors, self.codes, self.document_loss
                )
            except KeyError as missing:
                if not self.processors and self.codes is None:
                    raise ConfigError(
                        f"data.shards holds media ({missing} in {sample.shard}:{sample.key}) but the model "
                        "has no encoders and no media tokenizers: add model.encoders (+ connectors) or "
                        "model.media_tokenizers, or use text-only shards"
                    ) from None
                self.skips.skip("no_processor", f"{sample.shard}:{sample.key}", f"no processor for {missing}")
                continue
            problem = self._fits(document)
            if problem is not None:
                self.skips.skip("media_too_long", f"{sample.shard}:{sample.key}", problem)
                self.unpackable.skip("media_too_long", f"{sample.shard}:{sample.key}", problem)
                continue
            self.skips.ok()
            self.unpackable.ok()
            number += 1
            marks[number] = after
            yield replace(document, source=sample.source) if mixed else document

    def batches(
        self, state: MediaStreamState | None = None
    ) -> Iterator[tuple[PackedBatch, MediaStreamState]]:
        """Yield ``(batch, state_after_batch)`` forever, starting at ``state``."""
        state = state or MediaStreamState()
        marks: dict[int, AnyReaderState] = {}
        documents = self._documents(state.reader, marks, state.round_start)
        rows = []
        for pack, after in self.packer.pack(documents, PackerState(state.round_start, state.emitted)):
            rows.append(pack)
            for stale in [n for n in marks if n < after.round_start]:
                del marks[stale]
            if len(rows) == self.batch_size:
                batch = layout_batch(rows, self.seq_len, self.tokenizer.pad_id, self.ids, self.layout_loss)
                rows = []
                yield batch, MediaStreamState(marks[after.round_start], after.round_start, after.emitted)
