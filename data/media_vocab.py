"""The LLM vocabulary of an early-fusion model: text ids, then one code range per modality.

A discrete media tokenizer (``vq`` for images, ``speech_units`` for audio) gives codes in
``[0, codebook_size)``. :class:`MediaVocabulary` places them after the text tokenizer's
``text_size`` ids (its special tokens included), one range per modality in sorted
modality order (``audio`` before ``image``): ``id = offset[modality] + code``. The begin
and end markers of a media run are the text tokenizer's own ``<image_start>``/
``<image_end>`` and ``<audio_start>``/``<audio_end>``, so a text-only checkpoint keeps
every id it had and only gains rows. The layout is saved as JSON (``media_vocab.json`` in
the run directory, ``media_vocab`` in each checkpoint's ``state.json``) so a resumed or
initialised run can check that it sees the same ids.

:class:`MediaCodes` is the data pipeline's side: the run's loaded media tokenizers plus
the layout; it turns a decoded media segment into ``[begin] + ids + [end]``, using codes a
build stored in the segment's ``meta["codes"]`` when they come from the same tokenizer.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmpretrain.errors import ConfigError, UserError

if TYPE_CHECKING:
    import torch

    from mmpretrain.config import ComponentConfig
    from mmpretrain.data.decoders import DecodedSegment
    from mmpretrain.data.tokenizer import TextTokenizer
    from mmpretrain.encoders.media_tokenizer import MediaTokenizer

VOCAB_FILE = "media_vocab.json"
"""File name of the layout in a run directory."""

STORED_CODES_KEY = "codes"
"""Key of precomputed codes in a media segment's ``meta``: ``{"tokenizer": fingerprint,
"codes": [...]}`` (written by ``mmpt data build --tokenize-media``)."""


@dataclass(frozen=True)
class Codebook:
    """One modality's media tokenizer as the vocabulary sees it."""

    kind: str
    """Registered kind (``vq``, ``speech_units``)."""
    size: int
    """Codes are in ``[0, size)``."""
    fingerprint: str = ""
    """``kind:sha256`` of the tokenizer's weights (:func:`tokenizer_fingerprint`)."""


@dataclass(frozen=True)
class MediaVocabulary:
    """Text ids ``[0, text_size)``, then one code range per modality (sorted by name)."""

    text_size: int
    codebooks: Mapping[str, Codebook] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.text_size < 1:
            raise ValueError(f"text_size must be positive, got {self.text_size}")
        for modality, book in self.codebooks.items():
            if book.size < 1:
                raise ValueError(f"the {modality} codebook is empty")
        # sorted modality order is the id order; store it so equality ignores insertion order
        object.__setattr__(self, "codebooks", dict(sorted(self.codebooks.items())))

    @property
    def modalities(self) -> list[str]:
        """Modalities with a code range, in id order."""
        return list(self.codebooks)

    def offset(self, modality: str) -> int:
        """First id of ``modality``'s codes."""
        start = self.text_size
        for name, book in self.codebooks.items():
            if name == modality:
                return start
            start += book.size
        raise KeyError(f"no media tokenizer for {modality!r}; the vocabulary has {self.modalities}")

    def size(self, modality: str) -> int:
        """Number of codes of ``modality``."""
        return self.codebooks[modality].size

    @property
    def total_size(self) -> int:
        """Rows of the LLM's embedding table: text ids plus every code range."""
        return self.text_size + sum(book.size for book in self.codebooks.values())

    def to_ids(self, modality: str, codes: Sequence[int]) -> list[int]:
        """Token ids of ``modality``'s codes (each must be in ``[0, size)``)."""
        offset, size = self.offset(modality), self.size(modality)
        bad = next((c for c in codes if not 0 <= c < size), None)
        if bad is not None:
            raise ValueError(f"{modality} code {bad} is outside the codebook [0, {size})")
        return [offset + int(c) for c in codes]

    def modality_of(self, token_id: int) -> str | None:
        """The modality whose code range holds ``token_id`` (None for a text id)."""
        start = self.text_size
        for name, book in self.codebooks.items():
            if start <= token_id < start + book.size:
                return name
            start += book.size
        return None

    def to_codes(self, ids: Sequence[int]) -> tuple[str, list[int]]:
        """Inverse of :meth:`to_ids`: the modality and codes of ids from one code range."""
        if not ids:
            raise ValueError("no ids to map back to codes")
        modality = self.modality_of(ids[0])
        if modality is None or any(self.modality_of(i) != modality for i in ids):
            raise ValueError(f"ids {list(ids)[:8]} are not all codes of one modality")
        offset = self.offset(modality)
        return modality, [int(i) - offset for i in ids]

    def code_mask(self, ids: torch.Tensor) -> torch.Tensor:
        """Bool tensor: which of ``ids`` are media codes (any modality)."""
        return (ids >= self.text_size) & (ids < self.total_size)

    def describe(self) -> str:
        """One line: ``text 408 + audio codes 50 (ids 408-457) + image codes 256 (...)``."""
        parts = [f"text {self.text_size}"]
        for name, book in self.codebooks.items():
            start = self.offset(name)
            parts.append(f"{name} codes {book.size} ({book.kind}, ids {start}-{start + book.size - 1})")
        return " + ".join(parts) + f" = {self.total_size}"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (offsets included, for people reading the file)."""
        return {
            "text_size": self.text_size,
            "total_size": self.total_size,
            "codebooks": {
                name: {
                    "kind": book.kind,
                    "size": book.size,
                    "offset": self.offset(name),
                    "fingerprint": book.fingerprint,
                }
                for name, book in self.codebooks.items()
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MediaVocabulary:
        """Inverse of :meth:`as_dict` (offsets are recomputed and must agree)."""
        books = {
            name: Codebook(str(b["kind"]), int(b["size"]), str(b.get("fingerprint", "")))
            for name, b in dict(data.get("codebooks", {})).items()
        }
        vocab = cls(int(data["text_size"]), books)
        for name, b in dict(data.get("codebooks", {})).items():
            if "offset" in b and int(b["offset"]) != vocab.offset(name):
                raise ValueError(f"{name}: saved offset {b['offset']} != {vocab.offset(name)}")
        return vocab

    def save(self, path: Path) -> None:
        """Write the layout as JSON."""
        path.write_text(json.dumps(self.as_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> MediaVocabulary:
        """Read a layout written by :meth:`save` (one-line UserError if it is unreadable)."""
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{path} is not a readable media vocabulary ({exc})") from None


# ---------------------------------------------------------------------------- tokenizers


_FINGERPRINTS: dict[tuple[str, int, int], str] = {}


def tokenizer_fingerprint(directory: str | Path) -> str:
    """``kind:sha256`` of a media tokenizer directory's ``model.safetensors`` (cached per
    file path, size and mtime): codes stored in shards are reused only under the same one."""
    from mmpretrain.encoders.media_tokenizer import MANIFEST, WEIGHTS

    path = Path(directory)
    weights = path / WEIGHTS
    try:
        stat = weights.stat()
        key = (str(weights.resolve()), stat.st_size, stat.st_mtime_ns)
        if key not in _FINGERPRINTS:
            kind = json.loads((path / MANIFEST).read_text(encoding="utf-8")).get("kind")
            digest = hashlib.sha256()
            with weights.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            _FINGERPRINTS[key] = f"{kind}:{digest.hexdigest()}"
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is not a readable media tokenizer directory ({exc})") from None
    return _FINGERPRINTS[key]


def media_tokenizer_kinds() -> set[str]:
    """Kinds that :func:`~mmpretrain.encoders.media_tokenizer.load_media_tokenizer` reads."""
    import mmpretrain.encoders  # noqa: F401  (importing registers the kinds)
    from mmpretrain.encoders import media_tokenizer

    return set(media_tokenizer._LOADERS)  # the loader table is the list of kinds


class MediaCodes:
    """The run's media tokenizers and vocabulary: a decoded media segment -> its token run
    ``[begin] + codes + offset + [end]`` (stored codes reused when the fingerprint matches)."""

    def __init__(
        self,
        vocab: MediaVocabulary,
        tokenizers: Mapping[str, MediaTokenizer],
        begin: Mapping[str, int],
        end: Mapping[str, int],
    ) -> None:
        self.vocab = vocab
        self.tokenizers = dict(tokenizers)
        self.begin = dict(begin)
        self.end = dict(end)
        self.counts: Counter[str] = Counter()
        """``stored`` / ``encoded``: segments whose codes came from the shard / the tokenizer."""

    def handles(self, modality: str) -> bool:
        """Whether ``modality`` is tokenized into codes (early fusion)."""
        return modality in self.tokenizers

    def codes(self, segment: DecodedSegment) -> list[int]:
        """The segment's codes: those stored by the build if they come from this very
        tokenizer, else encoded now."""
        stored = segment.meta.get(STORED_CODES_KEY)
        fingerprint = self.vocab.codebooks[segment.kind].fingerprint
        if isinstance(stored, dict) and fingerprint and stored.get("tokenizer") == fingerprint:
            codes = stored.get("codes")
            if isinstance(codes, list):
                self.counts["stored"] += 1
                return codes
        self.counts["encoded"] += 1
        return self.tokenizers[segment.kind].encode(segment)

    def token_ids(self, segment: DecodedSegment) -> list[int]:
        """``[begin] + ids + [end]`` of one media segment."""
        modality = segment.kind
        return [self.begin[modality], *self.vocab.to_ids(modality, self.codes(segment)), self.end[modality]]


def load_media_codes(
    media_tokenizers: Mapping[str, ComponentConfig], text_tokenizer: TextTokenizer
) -> MediaCodes | None:
    """Load ``model.media_tokenizers`` (None when it is empty) and lay out their codes
    after the text tokenizer's ids."""
    if not media_tokenizers:
        return None
    from mmpretrain.data.layout import MediaTokenIds
    from mmpretrain.registry import TOKENIZERS

    tokenizers: dict[str, MediaTokenizer] = {}
    books: dict[str, Codebook] = {}
    for modality, cfg in sorted(media_tokenizers.items()):
        key = f"model.media_tokenizers.{modality}"
        tokenizer = TOKENIZERS.build(cfg)
        if getattr(tokenizer, "modality", None) != modality:
            raise ConfigError(
                f"{key}: {cfg.name} tokenizes {getattr(tokenizer, 'modality', '?')}, not {modality}"
            )
        path = getattr(cfg, "path", None)
        fingerprint = tokenizer_fingerprint(path) if path else ""
        tokenizers[modality] = tokenizer
        books[modality] = Codebook(tokenizer.kind, int(tokenizer.codebook_size), fingerprint)
    ids = MediaTokenIds.from_tokenizer(text_tokenizer)
    vocab = MediaVocabulary(text_tokenizer.vocab_size, books)
    return MediaCodes(vocab, tokenizers, ids.begin, ids.end)
