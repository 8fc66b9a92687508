"""Central data types: one document (:class:`Sample`) and one packed batch (:class:`PackedBatch`).

Every modality takes the same path (DESIGN.md section 2): a shard sample becomes a
:class:`Sample` of ordered :class:`Segment` objects, the packer turns many samples into one
fixed-shape :class:`PackedBatch`, and the model consumes that. Nothing here branches on
"text-only vs multimodal"; a text-only batch simply has an empty ``media`` dict.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args, overload

import torch

from mmpretrain.errors import DataFormatError

SegmentKind = Literal["text", "image", "audio"]
SEGMENT_KINDS: tuple[str, ...] = get_args(SegmentKind)

IGNORE_INDEX = -100
"""Label value that carries no loss (the value transformers' cross-entropy ignores)."""

PAD_DOC_ID = -1
"""``doc_ids`` value of padding positions."""


@dataclass
class Segment:
    """One piece of a document: a run of text, one image or one audio clip.

    ``text`` holds the text of a text segment, or the optional transcript of an audio
    segment. ``data`` holds the still-encoded bytes of a media file (jpg/png/webp,
    flac/wav); the encoder decodes and preprocesses them. ``member`` is the tar member the
    bytes came from (``"0.jpg"``), kept only so that decode errors can name it.
    ``loss=False`` marks a text segment that carries no loss (a prompt, a user turn of a
    conversation): the model reads it but is not trained to predict it.
    """

    kind: SegmentKind
    text: str | None = None
    data: bytes | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    member: str | None = None
    loss: bool = True

    def __post_init__(self) -> None:
        where = f"Segment(kind={self.kind!r})"
        if self.kind not in SEGMENT_KINDS:
            raise DataFormatError(f"Segment: kind {self.kind!r} is not one of {', '.join(SEGMENT_KINDS)}")
        if not isinstance(self.meta, dict):
            raise DataFormatError(f"{where}: meta must be a dict, got {type(self.meta).__name__}")
        if self.kind == "text":
            if not isinstance(self.text, str):
                raise DataFormatError(
                    f"{where}: a text segment needs text as a str, got {type(self.text).__name__}"
                )
            if self.data is not None:
                raise DataFormatError(f"{where}: a text segment cannot carry media data")
            return
        if not self.loss:
            raise DataFormatError(f"{where}: loss=False applies to text segments only")
        if not isinstance(self.data, bytes):
            raise DataFormatError(
                f"{where}: a media segment needs data as bytes (the encoded file), "
                f"got {type(self.data).__name__}"
            )
        if self.kind == "image" and self.text is not None:
            # Only audio has a natural text companion (its transcript); an image caption
            # belongs in its own text segment so that it is tokenized and trained on.
            raise DataFormatError(
                f"{where}: an image segment cannot carry text; put captions in a text segment"
            )
        if self.text is not None and not isinstance(self.text, str):
            raise DataFormatError(f"{where}: the transcript must be a str, got {type(self.text).__name__}")

    @property
    def is_media(self) -> bool:
        """True for image and audio segments."""
        return self.kind != "text"


@dataclass
class Sample:
    """One document: its shard key, the dataset it came from, and its ordered segments."""

    key: str
    source: str
    segments: list[Segment]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.segments:
            raise DataFormatError(f"sample {self.key!r}: has no segments")
        for i, seg in enumerate(self.segments):
            if not isinstance(seg, Segment):
                raise DataFormatError(
                    f"sample {self.key!r}: segments[{i}] is a {type(seg).__name__}, not a Segment"
                )

    def media_segments(self) -> list[Segment]:
        """The image and audio segments, in document order."""
        return [seg for seg in self.segments if seg.is_media]


@dataclass
class MediaBatch:
    """The media items of one modality in a :class:`PackedBatch`.

    ``inputs[i]`` is item ``i`` already preprocessed by its encoder; ``spans[i] = (row,
    start, length)`` is where its placeholder tokens sit in ``input_ids``; ``keys[i]`` is
    the key of the sample it came from (empty list = unknown).
    """

    modality: str
    inputs: torch.Tensor
    spans: list[tuple[int, int, int]]
    placeholder_id: int
    keys: list[str] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    """Valid size of each item along the one dimension in which items differ (audio
    length, number of image tiles) when they were zero-padded to stack them (empty =
    every item is full size; the encoder knows which dimension it varies)."""

    def to(self, device: torch.device | str, non_blocking: bool = False) -> MediaBatch:
        """A copy with ``inputs`` on ``device``."""
        return MediaBatch(
            modality=self.modality,
            inputs=self.inputs.to(device, non_blocking=non_blocking),
            spans=list(self.spans),
            placeholder_id=self.placeholder_id,
            keys=list(self.keys),
            sizes=list(self.sizes),
        )


@dataclass
class VarlenInfo:
    """Sequence boundaries for flash-attn's varlen kernels over the flattened ``B*L`` tokens.

    ``cu_seqlens`` (int32) starts at 0 and ends at ``B*L``; every document is one
    sequence and every padding token is its own length-1 sequence, so padding attends only
    to itself exactly as in the dense masks.
    """

    cu_seqlens: torch.Tensor
    max_seqlen: int


@dataclass
class PackedBatch:
    """A fixed-shape ``[B, L]`` batch of packed documents.

    - ``input_ids``: token ids; media items occupy runs of their modality's placeholder id.
    - ``labels``: equal to ``input_ids`` where trained, ``-100`` elsewhere. transformers
      shifts labels inside the model, so each document's first label is ``-100`` (it would
      be predicted from the previous document), as are padding and media placeholders.
    - ``position_ids``: restart at 0 at every document start.
    - ``doc_ids``: 0, 1, 2, ... per row in order of appearance, ``-1`` for trailing padding.
    - ``media``: modality -> :class:`MediaBatch`.
    - ``keys[row][doc_id]``: the sample key of each document (empty list = unknown).
    - ``sources[row][doc_id]``: the mix source name of each document (empty list = the
      data is not mixed).
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    position_ids: torch.Tensor
    doc_ids: torch.Tensor
    media: dict[str, MediaBatch] = field(default_factory=dict)
    keys: list[list[str]] = field(default_factory=list)
    sources: list[list[str]] = field(default_factory=list)

    # ------------------------------------------------------------------ helpers
    def to(self, device: torch.device | str, non_blocking: bool = False) -> PackedBatch:
        """A copy with every tensor (media inputs included) on ``device``."""
        return PackedBatch(
            input_ids=self.input_ids.to(device, non_blocking=non_blocking),
            labels=self.labels.to(device, non_blocking=non_blocking),
            position_ids=self.position_ids.to(device, non_blocking=non_blocking),
            doc_ids=self.doc_ids.to(device, non_blocking=non_blocking),
            media={name: mb.to(device, non_blocking) for name, mb in self.media.items()},
            keys=[list(row) for row in self.keys],
            sources=[list(row) for row in self.sources],
        )

    def num_label_tokens(self) -> int:
        """How many positions carry a loss (``labels != -100``)."""
        return int((self.labels != IGNORE_INDEX).sum().item())

    # ---------------------------------------------------------------- attention
    @overload
    def attention_mask(
        self,
        kind: Literal["additive", "bool"] = ...,
        dtype: torch.dtype = ...,
        sliding_window: int | None = ...,
    ) -> torch.Tensor: ...
    @overload
    def attention_mask(
        self, kind: Literal["varlen"], dtype: torch.dtype = ..., sliding_window: int | None = ...
    ) -> VarlenInfo: ...
    def attention_mask(
        self,
        kind: Literal["additive", "bool", "varlen"] = "additive",
        dtype: torch.dtype = torch.float32,
        sliding_window: int | None = None,
    ) -> torch.Tensor | VarlenInfo:
        """The block-causal mask that keeps attention inside each document.

        Query ``i`` may attend key ``j`` when both belong to the same document and
        ``j <= i`` (and ``i - j < sliding_window`` when a window is given, for Mistral- or
        Gemma-style models). A padding position attends only to itself, because an
        all-masked row turns into NaN in softmax.

        - ``"additive"``: ``[B, 1, L, L]`` tensor of ``dtype``, 0 where allowed and
          ``torch.finfo(dtype).min`` elsewhere. Correct for every attention implementation
          (eager, sdpa); use this one unless you know better.
        - ``"bool"``: ``[B, 1, L, L]``, True where allowed. Only right for sdpa: eager
          attention in transformers *adds* the mask to the scores, so a bool mask there
          silently attends across documents.
        - ``"varlen"``: a :class:`VarlenInfo` for flash-attn varlen kernels (pass
          ``sliding_window`` to the kernel's ``window_size`` yourself; it is not encoded).
        """
        doc = self.doc_ids
        if kind == "varlen":
            return self._varlen()
        if kind not in ("additive", "bool"):
            raise ValueError(f"attention_mask kind must be additive, bool or varlen, not {kind!r}")
        if sliding_window is not None and sliding_window < 1:
            raise ValueError(f"sliding_window must be >= 1, got {sliding_window}")
        length = doc.shape[-1]
        idx = torch.arange(length, device=doc.device)
        causal = idx[None, :] <= idx[:, None]  # [L(query), L(key)]
        if sliding_window is not None:
            causal = causal & (idx[:, None] - idx[None, :] < sliding_window)
        # Every padding position gets a unique negative id, so the same-document rule
        # alone lets it attend only to itself (fewer [B, L, L] passes than a separate
        # diagonal term: this runs every step).
        group = torch.where(doc >= 0, doc, -1 - idx)
        allowed = (group[:, None, :, None] == group[:, None, None, :]) & causal  # [B, 1, L, L]
        if kind == "bool":
            return allowed
        zero = torch.zeros((), dtype=dtype, device=doc.device)
        return torch.where(allowed, zero, torch.finfo(dtype).min)

    def _varlen(self) -> VarlenInfo:
        flat = self.doc_ids.reshape(-1)
        n = flat.numel()
        prev = torch.full_like(self.doc_ids, -2)
        prev[:, 1:] = self.doc_ids[:, :-1]
        # A sequence starts at every row start, at every change of doc id, and at every
        # padding token (each padding token is its own length-1 sequence).
        starts = (self.doc_ids != prev) | (self.doc_ids < 0)
        start_idx = torch.nonzero(starts.reshape(-1), as_tuple=False).reshape(-1)
        end = torch.tensor([n], dtype=start_idx.dtype, device=flat.device)
        cu_seqlens = torch.cat([start_idx, end]).to(torch.int32)
        lengths = cu_seqlens[1:] - cu_seqlens[:-1]
        max_seqlen = int(lengths.max().item()) if lengths.numel() else 0
        return VarlenInfo(cu_seqlens=cu_seqlens, max_seqlen=max_seqlen)

    # --------------------------------------------------------------- validation
    def validate(self) -> None:
        """Check every invariant of the packed format; raise :class:`DataFormatError` if broken.

        The message names the sample key (``keys[row][doc]``, or ``row R doc D`` when keys
        are unknown), the row and the position, so a bad packer or shard can be found.
        """
        self._validate_tensors()
        starts = self._validate_doc_ids()
        self._validate_keys()
        self._validate_positions(starts)
        placeholders = self._validate_media()
        self._validate_labels(starts, placeholders)

    def _batch_name(self) -> str:
        flat = [k for row in self.keys for k in row]
        if not flat:
            return "PackedBatch"
        shown = ", ".join(repr(k) for k in flat[:4])
        more = f" (+{len(flat) - 4} more)" if len(flat) > 4 else ""
        return f"PackedBatch (samples {shown}{more})"

    def _doc_name(self, row: int, doc: int) -> str:
        if doc < 0:
            return f"row {row} padding"
        if row < len(self.keys) and doc < len(self.keys[row]):
            return f"sample {self.keys[row][doc]!r} (row {row}, doc {doc})"
        return f"row {row} doc {doc}"

    def _at(self, row: int, pos: int) -> str:
        return self._doc_name(row, int(self.doc_ids[row, pos]))

    def _fail(self, row: int, pos: int, message: str) -> DataFormatError:
        return DataFormatError(f"PackedBatch: {self._at(row, pos)}: {message}")

    def _validate_tensors(self) -> None:
        names = ("input_ids", "labels", "position_ids", "doc_ids")
        shape = None
        for name in names:
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor):
                raise DataFormatError(
                    f"{self._batch_name()}: {name} is a {type(t).__name__}, expected a torch.Tensor"
                )
            if t.dim() != 2:
                raise DataFormatError(
                    f"{self._batch_name()}: {name} has shape {tuple(t.shape)}; expected 2-D [B, L]"
                )
            if t.dtype != torch.int64:
                raise DataFormatError(
                    f"{self._batch_name()}: {name} has dtype {t.dtype}; expected torch.int64"
                )
            if shape is None:
                shape = t.shape
            elif t.shape != shape:
                raise DataFormatError(
                    f"{self._batch_name()}: {name} has shape {tuple(t.shape)} but input_ids has "
                    f"{tuple(shape)}; all four tensors must share one [B, L] shape"
                )
        negative = torch.nonzero(self.input_ids < 0)
        if len(negative):
            row, pos = (int(v) for v in negative[0])
            raise self._fail(row, pos, f"input_ids[{pos}] is negative ({int(self.input_ids[row, pos])})")

    def _validate_doc_ids(self) -> torch.Tensor:
        """Check doc id numbering and return the [B, L] bool mask of document starts."""
        doc = self.doc_ids
        bad = torch.nonzero(doc < PAD_DOC_ID)
        if len(bad):
            row, pos = (int(v) for v in bad[0])
            raise DataFormatError(
                f"{self._batch_name()}: row {row}: doc_ids[{pos}] is {int(doc[row, pos])}; "
                "expected a document index >= 0 or -1 for padding"
            )
        real = doc >= 0
        after_pad = torch.cumsum((~real).to(torch.int64), dim=1) > 0
        bad = torch.nonzero(after_pad & real)
        if len(bad):
            row, pos = (int(v) for v in bad[0])
            raise self._fail(
                row, pos, f"document starts at position {pos} after padding; padding must be trailing"
            )
        prev = torch.full_like(doc, -1)
        prev[:, 1:] = doc[:, :-1]
        starts = real & (doc != prev)
        bad = torch.nonzero(starts & (doc != prev + 1))
        if len(bad):
            row, pos = (int(v) for v in bad[0])
            before = int(prev[row, pos])
            after = f"after {self._doc_name(row, before)}" if before >= 0 else f"row {row}"
            raise DataFormatError(
                f"PackedBatch: {after}: doc_ids[{pos}] is {int(doc[row, pos])}; expected "
                f"{before + 1} (documents are contiguous runs numbered 0, 1, 2, ... in order)"
            )
        return starts

    def _validate_keys(self) -> None:
        if not self.keys:
            return
        rows = self.doc_ids.shape[0]
        if len(self.keys) != rows:
            raise DataFormatError(
                f"{self._batch_name()}: keys has {len(self.keys)} rows but the batch has {rows}"
            )
        docs_per_row = (self.doc_ids.max(dim=1).values + 1).clamp(min=0).tolist()
        for row, (row_keys, n_docs) in enumerate(zip(self.keys, docs_per_row, strict=True)):
            if len(row_keys) != n_docs:
                raise DataFormatError(
                    f"{self._batch_name()}: row {row} has {n_docs} documents but "
                    f"{len(row_keys)} keys ({', '.join(map(repr, row_keys))})"
                )

    def _validate_positions(self, starts: torch.Tensor) -> None:
        rows, length = self.doc_ids.shape
        idx = torch.arange(length, device=self.doc_ids.device).expand(rows, length)
        start_of_doc = torch.cummax(torch.where(starts, idx, torch.zeros_like(idx)), dim=1).values
        expected = idx - start_of_doc
        # Padding position ids are free: padding attends only to itself.
        bad = torch.nonzero((self.doc_ids >= 0) & (self.position_ids != expected))
        if len(bad):
            row, pos = (int(v) for v in bad[0])
            raise self._fail(
                row,
                pos,
                f"position_ids[{pos}] is {int(self.position_ids[row, pos])}; expected "
                f"{int(expected[row, pos])} (position ids restart at 0 at each document start "
                "and count up by 1)",
            )

    def _validate_media(self) -> torch.Tensor:
        """Check media spans; return the [B, L] bool mask of all placeholder positions."""
        rows, length = self.input_ids.shape
        # owner[row, pos] = index into `names` of the modality whose span covers pos, or -1.
        owner = torch.full_like(self.input_ids, -1)
        names: list[str] = []
        seen_ids: dict[int, str] = {}
        for name, mb in self.media.items():
            if mb.modality != name:
                raise DataFormatError(
                    f"{self._batch_name()}: media[{name!r}] holds a MediaBatch of modality {mb.modality!r}"
                )
            if mb.placeholder_id in seen_ids:
                raise DataFormatError(
                    f"{self._batch_name()}: modalities {seen_ids[mb.placeholder_id]!r} and "
                    f"{name!r} share placeholder id {mb.placeholder_id}; each needs its own"
                )
            seen_ids[mb.placeholder_id] = name
            n_items = mb.inputs.shape[0] if mb.inputs.dim() > 0 else 0
            if len(mb.spans) != n_items:
                raise DataFormatError(
                    f"{self._batch_name()}: {name} has {n_items} inputs but {len(mb.spans)} spans"
                )
            if mb.keys and len(mb.keys) != len(mb.spans):
                raise DataFormatError(
                    f"{self._batch_name()}: {name} has {len(mb.spans)} spans but {len(mb.keys)} keys"
                )
            me = len(names)
            names.append(name)
            for i, (row, start, size) in enumerate(mb.spans):
                where = self._span_owner(row, start, mb.keys[i] if mb.keys else None)
                span = f"{name} span at positions [{start}, {start + size})"
                if not (0 <= row < rows) or size < 1 or start < 0 or start + size > length:
                    raise DataFormatError(
                        f"PackedBatch: {where}: {span} in row {row} is empty or outside the "
                        f"[{rows}, {length}] batch"
                    )
                docs = self.doc_ids[row, start : start + size]
                if int(docs[0]) < 0 or bool((docs != docs[0]).any()):
                    raise DataFormatError(
                        f"PackedBatch: {where}: {span} covers doc ids "
                        f"{sorted(set(docs.tolist()))}; a media item must lie inside one "
                        "document, never across a boundary or in padding"
                    )
                wrong = int((self.input_ids[row, start : start + size] != mb.placeholder_id).sum())
                if wrong:
                    raise DataFormatError(
                        f"PackedBatch: {where}: {span} holds {wrong} non-placeholder tokens; "
                        f"expected {size} {name} placeholders (id {mb.placeholder_id})"
                    )
                clash = torch.nonzero(owner[row, start : start + size] >= 0)
                if len(clash):
                    pos = start + int(clash[0])
                    raise DataFormatError(
                        f"PackedBatch: {where}: {span} overlaps an earlier {names[int(owner[row, pos])]} "
                        f"span at position {pos}"
                    )
                owner[row, start : start + size] = me
            # Every placeholder must belong to a span, or the model would scatter media
            # features into the wrong positions (or leave a placeholder embedding in place).
            is_placeholder = self.input_ids == mb.placeholder_id
            stray = torch.nonzero(is_placeholder & (owner != me))
            if len(stray):
                row, pos = (int(v) for v in stray[0])
                raise self._fail(
                    row,
                    pos,
                    f"stray {name} placeholder (id {mb.placeholder_id}) at position {pos} "
                    f"outside every {name} span; input_ids hold {int(is_placeholder.sum())} "
                    f"{name} placeholders but the spans cover {int((owner == me).sum())}",
                )
        return owner >= 0

    def _span_owner(self, row: int, start: int, item_key: str | None) -> str:
        """Name the document a span starts in, falling back to the media item's own key."""
        rows, length = self.doc_ids.shape
        if not (0 <= row < rows and 0 <= start < length):
            return f"sample {item_key!r} (row {row})" if item_key is not None else f"row {row}"
        doc = int(self.doc_ids[row, start])
        known = doc >= 0 and row < len(self.keys) and doc < len(self.keys[row])
        if known or item_key is None:
            return self._doc_name(row, doc)
        place = f"doc {doc}" if doc >= 0 else "padding"
        return f"sample {item_key!r} (row {row}, {place})"

    def _validate_labels(self, starts: torch.Tensor, placeholders: torch.Tensor) -> None:
        labels = self.labels
        trained = labels != IGNORE_INDEX
        checks = (
            (
                starts & trained,
                "label at the document's first position {pos} is {label}; expected -100 "
                "(transformers shifts labels, so it would be predicted from the previous document)",
            ),
            ((self.doc_ids < 0) & trained, "padding position {pos} has label {label}; expected -100"),
            (placeholders & trained, "media placeholder position {pos} has label {label}; expected -100"),
            (
                trained & (labels != self.input_ids),
                "label at position {pos} is {label} but input_ids holds {token}; labels must "
                "equal input_ids or be -100",
            ),
        )
        for bad_mask, template in checks:
            bad = torch.nonzero(bad_mask)
            if len(bad):
                row, pos = (int(v) for v in bad[0])
                raise self._fail(
                    row,
                    pos,
                    template.format(
                        pos=pos,
                        label=int(labels[row, pos]),
                        token=int(self.input_ids[row, pos]),
                    ),
                )
