"""`--format text`: plain text, JSON Lines or Parquet corpora -> text-only shards.

The input is read with the same code as training's text sources
(:mod:`mmpretrain.data.text_sources`): ``.jsonl``/``.jsonl.gz`` and ``.parquet`` by
extension (``--text-field`` names the column), anything else as plain text files split
into documents of grouped paragraphs; ``shakespeare`` is the built-in corpus.
"""

from __future__ import annotations

from collections.abc import Iterator

from mmpretrain.data.skips import SkipCounter
from mmpretrain.data.text_sources import (
    JsonlSource,
    ParquetSource,
    TextDocument,
    iter_documents,
    source_from_path,
)

from .formats import RecordStream, register_format
from .options import BuildOptions
from .records import RecordSkip, SourceRecord, text_segment


class _Forwarding(SkipCounter):
    """A skip counter that hands every skip on (the build counts them in its index)."""

    def __init__(self) -> None:
        super().__init__(max_skips=None, name="text input")
        self.pending: list[RecordSkip] = []

    def skip(self, reason: str, where: str, detail: str = "") -> None:
        self.pending.append(RecordSkip(reason, where, detail))


def text_documents(options: BuildOptions) -> Iterator[TextDocument | RecordSkip]:
    """The documents of ``--input`` in order, with a :class:`RecordSkip` for each bad record."""
    source = source_from_path(str(options.input))
    if isinstance(source, JsonlSource):
        source = JsonlSource(paths=source.paths, field=options.text_field)
    elif isinstance(source, ParquetSource):
        source = ParquetSource(paths=source.paths, column=options.text_field)
    counter = _Forwarding()
    for document in iter_documents(source, counter):
        yield from counter.pending
        counter.pending.clear()
        yield document
    yield from counter.pending


@register_format(
    "text",
    "text / JSONL / Parquet corpus -> one text-only sample per document",
    "mmpt data build --format text --input corpus.jsonl --text-field text --out shards/text",
)
def parse_text(options: BuildOptions) -> RecordStream:
    """One text-only record per document."""
    number = 0
    for item in text_documents(options):
        if isinstance(item, RecordSkip):
            yield item
            continue
        yield SourceRecord(f"text/{number:09d}", item.key, (text_segment(item.text),), {"source": "text"})
        number += 1
