"""`mmpt data build`: public dataset layouts -> webdataset shards + ``index.json``.

Format parsers (one module each) turn a dataset's own layout into
:class:`~mmpretrain.data.build.records.SourceRecord` objects; the runner reads and encodes
their media in worker processes, removes duplicates, writes shards and the index.
"""

from .formats import available_formats, get_format, register_format
from .options import BuildOptions
from .records import RecordSegment, RecordSkip, SourceRecord, text_segment

__all__ = [
    "BuildOptions",
    "RecordSegment",
    "RecordSkip",
    "SourceRecord",
    "available_formats",
    "get_format",
    "register_format",
    "text_segment",
]
