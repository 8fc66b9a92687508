"""Near-duplicate document removal with MinHash + locality-sensitive hashing.

A document is the set of its word 5-grams ("shingles"; lower-cased, punctuation dropped).
Two documents are near-duplicates when the Jaccard similarity of their shingle sets is at
least ``threshold``. MinHash estimates it from ``num_perm`` hash minima per document; LSH
splits the signature into bands so that only documents agreeing on a whole band are
compared (the candidates), and a candidate counts as a duplicate only when the estimated
similarity (the fraction of equal minima) reaches the threshold. With the defaults (128
minima, 32 bands of 4) a pair at Jaccard 0.8 becomes a candidate with probability
1 - (1 - 0.8**4)**32 > 0.9999. Memory: 512 bytes per kept document.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np

_WORD = re.compile(r"\w+")


def shingles(text: str, words: int = 5) -> set[bytes]:
    """The word ``words``-grams of ``text`` (a shorter text is one shingle)."""
    tokens = _WORD.findall(text.lower())
    if not tokens:
        return set()
    if len(tokens) <= words:
        return {" ".join(tokens).encode("utf-8")}
    return {" ".join(tokens[i : i + words]).encode("utf-8") for i in range(len(tokens) - words + 1)}


def jaccard(a: str, b: str, words: int = 5) -> float:
    """Exact Jaccard similarity of two texts' shingle sets (for tests and reports)."""
    sa, sb = shingles(a, words), shingles(b, words)
    if not sa and not sb:
        return 1.0
    return len(sa & sb) / len(sa | sb)


class NearDuplicateFilter:
    """Remembers documents and says whether a new one near-duplicates an earlier one."""

    def __init__(
        self,
        threshold: float = 0.8,
        num_perm: int = 128,
        bands: int = 32,
        shingle_words: int = 5,
        seed: int = 0,
    ):
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        if num_perm % bands:
            raise ValueError(f"num_perm {num_perm} must be a multiple of bands {bands}")
        self.threshold = threshold
        self.bands = bands
        self.rows = num_perm // bands
        self.shingle_words = shingle_words
        rng = np.random.default_rng(seed)
        # Multiply-add-shift hashing (Dietzfelbinger): (a * x + b) mod 2**64, top 32 bits.
        self._a = rng.integers(0, 1 << 63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        self._b = rng.integers(0, 1 << 63, size=num_perm, dtype=np.uint64)
        self._tables: list[dict[bytes, list[int]]] = [{} for _ in range(bands)]
        self._signatures: list[np.ndarray] = []

    def signature(self, text: str) -> np.ndarray | None:
        """The MinHash signature of ``text`` (uint32 per minimum); None for a text without words."""
        grams = shingles(text, self.shingle_words)
        if not grams:
            return None
        hashes = np.fromiter(
            (int.from_bytes(hashlib.blake2b(g, digest_size=4).digest(), "little") for g in grams),
            dtype=np.uint64,
            count=len(grams),
        )
        with np.errstate(over="ignore"):  # the wrap-around is the hash
            mixed = (self._a[:, None] * hashes[None, :] + self._b[:, None]) >> np.uint64(32)
        return mixed.min(axis=1).astype(np.uint32)

    def check_and_add(self, text: str) -> int | None:
        """The index of an earlier document ``text`` near-duplicates (it is then not added),
        or None (``text`` is remembered as document number ``len(self)``)."""
        signature = self.signature(text)
        if signature is None:
            return None
        keys = [signature[i * self.rows : (i + 1) * self.rows].tobytes() for i in range(self.bands)]
        candidates: set[int] = set()
        for table, key in zip(self._tables, keys, strict=True):
            candidates.update(table.get(key, ()))
        for other in sorted(candidates):
            if float(np.mean(self._signatures[other] == signature)) >= self.threshold:
                return other
        number = len(self._signatures)
        self._signatures.append(signature)
        for table, key in zip(self._tables, keys, strict=True):
            table.setdefault(key, []).append(number)
        return None

    def __len__(self) -> int:
        return len(self._signatures)
