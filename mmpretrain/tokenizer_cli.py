"""`mmpt tokenizer train --kind bpe`: read a text source, train, save, check, summarize.

The output directory is a transformers tokenizer directory (``AutoTokenizer.from_pretrained``
loads it) and the value to put in a config's ``tokenizer.path``.
"""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from mmpretrain.errors import UserError

SAMPLE_CHARS = 2000
"""Characters of the first document used for the round-trip check."""

PROGRESS_EVERY_S = 10.0
"""Seconds between progress lines on stderr while reading."""

# Files a tokenizer directory may hold; --overwrite removes them so that no stale file of
# an earlier tokenizer (a GPT-2 vocab.json, a special_tokens_map.json) is loaded with ours.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
)


class _DocumentTexts:
    """Iterates the texts of documents, counting them and keeping the first as a sample."""

    def __init__(self, documents: Iterator[str]) -> None:
        self._documents = documents
        self.count = 0
        self.chars = 0
        self.sample = ""
        self._started = time.monotonic()
        self._last_report = self._started

    def __iter__(self) -> Iterator[str]:
        for text in self._documents:
            self.count += 1
            self.chars += len(text)
            if not self.sample and text:
                self.sample = text[:SAMPLE_CHARS]
            now = time.monotonic()
            if now - self._last_report >= PROGRESS_EVERY_S:
                self._last_report = now
                print(f"read {self.count} documents ({self.chars / 1e6:.1f}M characters)", file=sys.stderr)
            yield text
        elapsed = time.monotonic() - self._started
        if elapsed < PROGRESS_EVERY_S:  # quick reads stay quiet
            return
        print(
            f"read {self.count} documents ({self.chars / 1e6:.1f}M characters) in {elapsed:.1f}s; "
            "learning merges",
            file=sys.stderr,
        )


def check_output_dir(out: Path, overwrite: bool) -> None:
    """Refuse a file or a non-empty directory as ``--out`` unless ``overwrite``."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a directory; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise UserError(
                f"--out {out} is not empty; pass --overwrite to replace its tokenizer files "
                "or choose another --out"
            )
        for name in TOKENIZER_FILES:
            (out / name).unlink(missing_ok=True)


def train_bpe_command(input_path: str, vocab_size: int | None, out: str, *, overwrite: bool = False) -> int:
    """Train a byte-level BPE on ``input_path`` and save it to ``out``; prints a summary."""
    from mmpretrain.data.skips import SkipCounter
    from mmpretrain.data.text_sources import describe_source, iter_documents, source_from_path
    from mmpretrain.data.tokenizer import SPECIAL_TOKENS, SpecialTokens, load_tokenizer, train_bpe

    if vocab_size is None:
        raise UserError(
            "--vocab-size N is required for --kind bpe (the learned vocabulary; "
            f"{len(SPECIAL_TOKENS)} special tokens come on top), e.g. --vocab-size 4096"
        )
    out_dir = Path(out)
    check_output_dir(out_dir, overwrite)
    source = source_from_path(input_path)
    skips = SkipCounter(name=describe_source(source))
    texts = _DocumentTexts(doc.text for doc in iter_documents(source, skips=skips))
    documents = iter(texts)
    first = next(documents, None)  # fail clearly on an empty input, before training
    if first is None:
        raise UserError(
            f"--input {input_path} holds no documents ({skips.skipped} skipped); give text files, "
            "a .jsonl/.parquet file, .tar shards or 'shakespeare'"
        )
    tokenizer = train_bpe(itertools.chain([first], documents), vocab_size)
    tokenizer.save(out_dir)

    # The saved directory must load and tokenize exactly like the tokenizer in memory.
    reloaded = load_tokenizer(out_dir)
    sample_ids = tokenizer.encode(texts.sample)
    round_trip_ok = (
        reloaded.encode(texts.sample) == sample_ids and reloaded.decode(sample_ids) == texts.sample
    )

    reasons = ", ".join(f"{reason}: {n}" for reason, n in skips.by_reason.items())
    ids = reloaded.special_token_ids
    special = " ".join(
        f"{token}={ids[role]}" for role, token in zip(SpecialTokens._fields, SPECIAL_TOKENS, strict=True)
    )
    chars_per_token = len(texts.sample) / max(len(sample_ids), 1)
    print(f"trained a byte-level BPE tokenizer -> {out_dir}")
    print(
        f"  documents:   {texts.count} read, {skips.skipped} skipped" + (f" ({reasons})" if reasons else "")
    )
    print(
        f"  vocabulary:  {reloaded.learned_vocab_size} learned + {len(SPECIAL_TOKENS)} special "
        f"= {reloaded.vocab_size} ids"
    )
    print(f"  special ids: {special}")
    print(
        f"  round trip:  {'ok' if round_trip_ok else 'FAILED'} on a {len(texts.sample)}-character sample "
        f"({len(sample_ids)} tokens, {chars_per_token:.2f} characters/token)"
    )
    print(f"  use it:      AutoTokenizer.from_pretrained({str(out_dir)!r}) or tokenizer.path: {out_dir}")
    if not round_trip_ok:
        print(f"error: the saved tokenizer in {out_dir} does not reproduce the sample text", file=sys.stderr)
        return 1
    return 0
