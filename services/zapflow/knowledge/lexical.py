"""BM25 over an inverted index that takes documents one at a time.

Why not bm25s's own index (bm25s is a dependency for its stop-word lists, and a test checks that
these scores equal its scores): a bm25s index is built once over a whole corpus and cannot take
or drop a document. Here turns arrive all day and knowledge-base files are replaced one at a time;
rebuilding a tenant's 50,000 chunks for each would cost seconds per change. The scoring is
bm25s's default, Lucene's BM25: idf = ln(1 + (N - df + 0.5) / (df + 0.5)), and per term
idf * tf / (tf + k1 * (1 - b + b * dl / avgdl)).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

K1 = 1.5
B = 0.75


@dataclass
class _Postings:
    frequencies: dict[int, int] = field(default_factory=dict)  # slot: how often the term occurs there
    # Numpy copies for scoring, rebuilt after a change.
    arrays: tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]] | None = None


class LexicalIndex:
    """Documents live in slots (0..capacity); the caller owns the slot numbers."""

    def __init__(self) -> None:
        self._terms: dict[str, _Postings] = {}
        self._lengths = np.zeros(0, dtype=np.float32)
        self._document_terms: dict[int, Counter[str]] = {}
        self._total_length = 0

    @property
    def size(self) -> int:
        return len(self._document_terms)

    def add(self, slot: int, terms: list[str]) -> None:
        if slot in self._document_terms:
            self.remove(slot)
        self._grow(slot + 1)
        counts = Counter(terms)
        for term, frequency in counts.items():
            postings = self._terms.get(term)
            if postings is None:
                postings = self._terms[term] = _Postings()
            postings.frequencies[slot] = frequency
            postings.arrays = None
        self._document_terms[slot] = counts
        self._lengths[slot] = len(terms)
        self._total_length += len(terms)

    def remove(self, slot: int) -> None:
        counts = self._document_terms.pop(slot, None)
        if counts is None:
            return
        self._total_length -= int(self._lengths[slot])
        self._lengths[slot] = 0
        for term in counts:
            postings = self._terms[term]
            del postings.frequencies[slot]
            postings.arrays = None
            if not postings.frequencies:
                del self._terms[term]

    def scores(self, terms: list[str], capacity: int) -> npt.NDArray[np.float32]:
        """BM25 of every slot below `capacity` for the query terms (0 where nothing matches)."""
        scores = np.zeros(capacity, dtype=np.float32)
        documents = self.size
        if not documents:
            return scores
        average_length = self._total_length / documents or 1.0
        for term in dict.fromkeys(terms):
            postings = self._terms.get(term)
            if postings is None:
                continue
            if postings.arrays is None:
                postings.arrays = (
                    np.fromiter(postings.frequencies.keys(), dtype=np.int64, count=len(postings.frequencies)),
                    np.fromiter(postings.frequencies.values(), dtype=np.float32, count=len(postings.frequencies)),
                )
            slots, frequencies = postings.arrays
            frequency_in_corpus = len(slots)
            idf = math.log(1 + (documents - frequency_in_corpus + 0.5) / (frequency_in_corpus + 0.5))
            norms = K1 * (1 - B + B * self._lengths[slots] / average_length)
            # A slot occurs once per term: plain fancy-index addition is exact (no np.add.at needed).
            scores[slots] += idf * frequencies / (frequencies + norms)
        return scores

    def _grow(self, needed: int) -> None:
        if needed <= len(self._lengths):
            return
        lengths = np.zeros(max(needed, 2 * len(self._lengths), 64), dtype=np.float32)
        lengths[: len(self._lengths)] = self._lengths
        self._lengths = lengths
