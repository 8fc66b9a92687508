"""Options of one `mmpt data build` run (the CLI flags, typed)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

DEFAULT_MAX_IMAGE_SIDE = 512
"""Images are stored with their longer side at most this many pixels (decoding dominates
loading; 512 covers 384/448-pixel encoders with room for crops)."""


@dataclass(frozen=True)
class BuildOptions:
    """Everything a build needs besides the records.

    Common: ``input`` (file or directory), ``out``, ``images_dir`` (what image paths are
    relative to; default: the input's directory), ``audio_dir`` (same for audio),
    ``source`` (dataset name written into every sample; default: the detected layout),
    ``workers`` (processes that read and encode media; 0 = in the main process),
    ``max_image_side``, ``shard_samples``/``shard_bytes`` (a shard is closed at whichever
    comes first), ``dedup_media`` (drop exact-duplicate media by content hash),
    ``dedup_text``/``dedup_threshold`` (drop near-duplicate documents, MinHash Jaccard),
    ``max_skip_fraction`` (stop once more than this fraction of records was skipped, after
    100), ``limit`` (stop after this many records), ``seed``.

    Per format: ``layout`` (interleaved: mmc4|obelics; others: detected), ``min_sim``
    (MMC4: drop images whose ``matched_sim`` is lower), ``splits`` (Karpathy: keep these
    splits), ``text_field`` (JSONL/Parquet text column), ``voice``/``tts_rate``/
    ``tts_ratio``/``tts_span_words``/``tts_mode`` (tts-interleaved).

    Early fusion: ``tokenize_media`` pairs (modality, media tokenizer directory) whose codes
    are stored in each media segment's ``meta["codes"]`` (``--tokenize-media DIR``).
    """

    input: Path
    out: Path
    images_dir: Path | None = None
    audio_dir: Path | None = None
    source: str | None = None
    workers: int = 0
    max_image_side: int = DEFAULT_MAX_IMAGE_SIDE
    max_audio_seconds: float = 600.0
    shard_samples: int = 1000
    shard_bytes: int = 512 * 1024 * 1024
    dedup_media: bool = True
    dedup_text: bool = False
    dedup_threshold: float = 0.8
    max_skip_fraction: float = 0.9
    limit: int | None = None
    seed: int = 0
    layout: str | None = None
    min_sim: float | None = None
    splits: tuple[str, ...] = ()
    text_field: str = "text"
    voice: str = "en"
    tts_rate: int = 160
    tts_ratio: float = 0.5
    tts_span_words: int = 12
    tts_mode: str = "replace"
    tokenize_media: tuple[tuple[str, str], ...] = ()

    def media_root(self, kind: str) -> Path:
        """The directory relative media paths of ``kind`` are resolved against."""
        chosen = self.images_dir if kind == "image" else self.audio_dir
        if chosen is not None:
            return chosen
        return self.input if self.input.is_dir() else self.input.parent

    def as_json(self) -> dict[str, Any]:
        """JSON-ready form for ``index.json``."""
        return {
            k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
            for k, v in asdict(self).items()
        }
