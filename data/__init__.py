"""Data: the shard format, readers, packing and mixing (imported as ``mmpretrain.data``).

Only the central types and the shard schema are imported here, so ``import
mmpretrain.data`` stays cheap (torch is the one heavy dependency).
"""

from __future__ import annotations

from .shard_schema import (
    AUDIO_EXTENSIONS,
    IMAGE_EXTENSIONS,
    SCHEMA_VERSION,
    parse_sample_json,
    sample_from_json,
    validate_sample_json,
)
from .types import IGNORE_INDEX, MediaBatch, PackedBatch, Sample, Segment, VarlenInfo

__all__ = [
    "AUDIO_EXTENSIONS",
    "IGNORE_INDEX",
    "IMAGE_EXTENSIONS",
    "SCHEMA_VERSION",
    "MediaBatch",
    "PackedBatch",
    "Sample",
    "Segment",
    "VarlenInfo",
    "parse_sample_json",
    "sample_from_json",
    "validate_sample_json",
]
