"""One searchable collection in memory (a tenant's knowledge base, or its past turns): dense
vectors and BM25 side by side, fused by weight.

Hybrid ranking is weight · minmax(cosine) + (1 − weight) · minmax(BM25) over the entries searched
(bench/retrieval/candidates.md measured it against reciprocal-rank fusion: 0.875 against 0.801
recall@1). A min-max score is 1 at the top by construction, so each hit also carries its raw
cosine similarity and BM25 score: thresholds are taken on those.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
import numpy.typing as npt

from zapflow.knowledge.lexical import LexicalIndex

P = TypeVar("P")
A = TypeVar("A", bound=npt.NDArray[np.generic])
Vector = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Scored(Generic[P]):
    payload: P
    score: float  # the fused rank score, 0..1
    similarity: float | None  # cosine of the question and the entry; None without vectors
    lexical: float  # BM25


class Collection(Generic[P]):
    """Entries by key, each with a language, its index terms and (optionally) a unit vector."""

    def __init__(self, dimensions: int) -> None:
        self._dimensions = dimensions
        self._slots: dict[str, int] = {}
        self._free: list[int] = []
        self._payloads: list[P | None] = []
        self._languages: list[str] = []
        # The language of each slot as a small number, so a search filters by language in numpy.
        self._language_numbers: dict[str, int] = {}
        self._language_of = np.zeros(0, dtype=np.int32)
        self._vectors = np.zeros((0, dimensions), dtype=np.float32)
        self._has_vector = np.zeros(0, dtype=bool)
        self._alive = np.zeros(0, dtype=bool)
        self._language_counts: Counter[str] = Counter()
        self._lexical = LexicalIndex()

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, key: str) -> bool:
        return key in self._slots

    def keys(self) -> Iterator[str]:
        return iter(list(self._slots))

    @property
    def languages(self) -> tuple[str, ...]:
        """The languages entries are in, sorted."""
        return tuple(sorted(language for language, count in self._language_counts.items() if count))

    @property
    def has_vectors(self) -> bool:
        return bool(self._has_vector.any())

    @property
    def vector_bytes(self) -> int:
        return int(self._vectors.nbytes)

    def put(self, key: str, payload: P, language: str, terms: list[str], vector: Vector | None) -> None:
        """Add an entry, or replace the one with this key."""
        if key in self._slots:
            self.remove(key)
        slot = self._free.pop() if self._free else self._new_slot()
        self._slots[key] = slot
        self._payloads[slot] = payload
        self._languages[slot] = language
        self._language_of[slot] = self._language_numbers.setdefault(language, len(self._language_numbers))
        self._language_counts[language] += 1
        self._alive[slot] = True
        if vector is not None:
            norm = float(np.linalg.norm(vector))
            self._vectors[slot] = vector / norm if norm else vector
            self._has_vector[slot] = True
        self._lexical.add(slot, terms)

    def remove(self, key: str) -> None:
        slot = self._slots.pop(key, None)
        if slot is None:
            return
        self._lexical.remove(slot)
        self._language_counts[self._languages[slot]] -= 1
        self._payloads[slot] = None
        self._alive[slot] = False
        self._has_vector[slot] = False
        self._vectors[slot] = 0
        self._free.append(slot)

    def search(
        self,
        terms: list[str],
        query: Vector | None,
        languages: tuple[str, ...] | None,
        limit: int,
        dense_weight: float,
    ) -> list[Scored[P]]:
        """The best `limit` entries in `languages` (None: all), best first."""
        used = len(self._payloads)
        candidates = self._alive[:used].copy()
        if languages is not None:
            numbers = [self._language_numbers[language] for language in languages if language in self._language_numbers]
            candidates &= np.isin(self._language_of[:used], numbers)
        positions = np.flatnonzero(candidates)
        if not len(positions):
            return []
        lexical = self._lexical.scores(terms, used)[positions]
        similarity: npt.NDArray[np.float32] | None = None
        if query is not None and self._has_vector[positions].any():
            norm = float(np.linalg.norm(query))
            unit = (query / norm if norm else query).astype(np.float32)
            # numpy's own single-threaded loop: OpenBLAS's sgemv splits the scan over both cores and waits
            # for the slower, so it took up to twice as long whenever the other core was busy embedding a
            # question (docs/benchmark.md, Knowledge). Same scores within float32 rounding.
            similarity = np.einsum("ij,j->i", self._vectors[:used], unit)[positions]
            fused = dense_weight * _minmax(similarity) + (1 - dense_weight) * _minmax(lexical)
        else:
            # Without vectors, an entry that shares no term with the question is no answer at all.
            matched = lexical > 0
            positions, lexical = positions[matched], lexical[matched]
            if not len(positions):
                return []
            fused = _minmax(lexical)
        best = _top(fused, limit)
        return [
            Scored(
                payload=self._payload(int(positions[i])),
                score=float(fused[i]),
                similarity=float(similarity[i]) if similarity is not None and self._has_vector[positions[i]] else None,
                lexical=float(lexical[i]),
            )
            for i in best
        ]

    def _payload(self, slot: int) -> P:
        payload = self._payloads[slot]
        assert payload is not None, "a live slot has its payload"
        return payload

    def _new_slot(self) -> int:
        slot = len(self._payloads)
        self._payloads.append(None)
        self._languages.append("")
        if slot >= len(self._alive):
            capacity = max(64, 2 * len(self._alive))
            self._vectors = _grown(self._vectors, capacity)
            self._has_vector = _grown(self._has_vector, capacity)
            self._alive = _grown(self._alive, capacity)
            self._language_of = _grown(self._language_of, capacity)
        return slot


def _minmax(scores: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    low, high = float(scores.min()), float(scores.max())
    if high <= low:
        # One candidate, or all alike: each is as good as the best there is (if any is good at all).
        return np.ones_like(scores) if high > 0 else np.zeros_like(scores)
    return (scores - low) / (high - low)


def _top(scores: npt.NDArray[np.float32], limit: int) -> npt.NDArray[np.int64]:
    """Indices of the `limit` highest scores, highest first; ties in entry order."""
    chosen = np.argpartition(-scores, limit - 1)[:limit] if limit < len(scores) else np.arange(len(scores))
    order = np.lexsort((chosen, -scores[chosen]))
    return chosen[order]


def _grown(array: A, capacity: int) -> A:
    grown = np.zeros((capacity, *array.shape[1:]), dtype=array.dtype)
    grown[: len(array)] = array
    return grown  # type: ignore[return-value]  # same dtype and rank as the array given
