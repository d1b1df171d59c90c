"""Pair sampling on the pointwise-teacher-ranked list (PairDistill, Sec. 3).

For each query the retrieved passages are ordered by the pointwise teacher (``teacher_rank``).
The candidate pairs are every ``(i, j)`` of positions in that order with ``0 < j - i < delta``:
only passages that are close in the ranking are compared, since those are the ones the pointwise
teacher is least sure how to order. From the candidates ``min(pairs_per_query, n_candidates)``
are drawn uniformly without replacement.

The draw for a query uses its own ``numpy.random.Generator``, seeded from ``(seed, iteration,
query_id)`` through SHA-256, so a query's sample depends neither on the row order of the input nor
on which other queries are in the frame: sampling shard by shard gives the same pairs as sampling
at once. The iteration (the distillation round) is part of the seed so that each round draws its
pairs afresh: seeded by ``(seed, query_id)`` alone, a query whose list has the same length every
round would get the same rank positions compared in round 2 as in round 1.

API
---
``candidate_pairs(n, delta)``            (P, 2) positions, lexicographic.
``sample_pairs(pointwise, delta, m, seed, iteration=None)`` frame with the io ``"pairs"`` schema.
``pair_counts(pairs, pointwise=None)``    per-query ``n_candidates`` / ``n_sampled``; pass the
                                          pointwise frame to also list queries with no pairs
                                          (fewer than 2 passages) as zeros.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np
import pandas as pd

COUNTS_COLUMNS = ("query_id", "n_candidates", "n_sampled")


@lru_cache(maxsize=256)
def _candidate_pairs_cached(n: int, delta: int) -> np.ndarray:
    if n < 2 or delta < 2:
        return np.empty((0, 2), dtype=np.int64)
    i, j = np.triu_indices(n, k=1)          # row-major: lexicographic in (i, j)
    keep = (j - i) < delta
    out = np.stack([i[keep], j[keep]], axis=1).astype(np.int64)
    out.setflags(write=False)
    return out


def candidate_pairs(n: int, delta: int) -> np.ndarray:
    """All ``(i, j)`` with ``0 <= i < j < n`` and ``j - i < delta``, lexicographic, shape (P, 2).

    ``P = sum_{g=1}^{min(delta, n) - 1} (n - g)``; ``delta < 2`` or ``n < 2`` gives ``(0, 2)``.
    """
    return _candidate_pairs_cached(int(n), int(delta)).copy()


def n_candidate_pairs(n: int, delta: int) -> int:
    """Closed form of ``len(candidate_pairs(n, delta))``."""
    g = max(0, min(delta, n) - 1)            # gaps 1..g are allowed
    return g * n - g * (g + 1) // 2


def query_seed(seed: int, query_id: str, iteration: int | None = None) -> int:
    """Stable 64-bit seed for one query in one round (independent of Python's hash randomisation).

    ``iteration=None`` is the round-less seed of ``(seed, query_id)`` (a hand run of one sample)."""
    key = f"{seed}:{query_id}" if iteration is None else f"{seed}:{int(iteration)}:{query_id}"
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little")


def _validate(pointwise: pd.DataFrame, delta: int, pairs_per_query: int) -> None:
    if not isinstance(delta, (int, np.integer)) or delta < 2:
        raise ValueError(f"delta must be an integer >= 2 (pairs need 0 < j - i < delta), got {delta!r}")
    if not isinstance(pairs_per_query, (int, np.integer)) or pairs_per_query < 1:
        raise ValueError(f"pairs_per_query must be an integer >= 1, got {pairs_per_query!r}")
    missing = [c for c in ("query_id", "doc_id", "teacher_rank") if c not in pointwise.columns]
    if missing:
        raise ValueError(f"pointwise frame lacks column(s) {missing}")
    if pointwise["teacher_rank"].isna().any():
        raise ValueError("pointwise frame has missing teacher_rank values")
    dup = pointwise.duplicated(["query_id", "doc_id"], keep=False)
    if dup.any():
        row = pointwise.loc[dup].iloc[0]
        raise ValueError(f"duplicated (query_id, doc_id) in pointwise frame: "
                         f"({row['query_id']!r}, {row['doc_id']!r})")
    dup = pointwise.duplicated(["query_id", "teacher_rank"], keep=False)
    if dup.any():
        row = pointwise.loc[dup].iloc[0]
        raise ValueError(f"duplicated teacher_rank {int(row['teacher_rank'])} within query "
                         f"{row['query_id']!r}")


def sample_pairs(pointwise: pd.DataFrame, delta: int, pairs_per_query: int,
                 seed: int, iteration: int | None = None) -> pd.DataFrame:
    """Sample up to ``pairs_per_query`` near-in-rank pairs per query, seeded by ``(seed,
    iteration, query_id)`` (see :func:`query_seed`): another round draws other pairs.

    ``pointwise`` has the io ``"pointwise"`` columns (only ``query_id``, ``doc_id`` and
    ``teacher_rank`` are used). Returns a frame with the io ``"pairs"`` columns, ``doc_a`` the
    better teacher-ranked passage (smaller ``teacher_rank``), sorted by
    ``(query_id, rank_a, rank_b)``. Queries with fewer than 2 passages give no rows; use
    :func:`pair_counts` with ``pointwise=`` to see them.
    """
    _validate(pointwise, delta, pairs_per_query)
    frame = pd.DataFrame({
        "query_id": pointwise["query_id"].astype(str).to_numpy(),
        "doc_id": pointwise["doc_id"].astype(str).to_numpy(),
        "teacher_rank": pointwise["teacher_rank"].to_numpy(dtype=np.int64),
    }).sort_values(["query_id", "teacher_rank"], kind="stable", ignore_index=True)

    qids = frame["query_id"].to_numpy()
    docs = frame["doc_id"].to_numpy()
    ranks = frame["teacher_rank"].to_numpy()
    # boundaries of each query's block in the sorted frame
    starts = np.flatnonzero(np.r_[True, qids[1:] != qids[:-1]]) if len(qids) else np.array([], int)
    ends = np.r_[starts[1:], len(qids)]

    chunks: list[tuple] = []
    for s, e in zip(starts, ends):
        n = int(e - s)
        cands = _candidate_pairs_cached(n, int(delta))
        n_cand = len(cands)
        if n_cand == 0:
            continue
        k = min(int(pairs_per_query), n_cand)
        rng = np.random.default_rng(query_seed(seed, qids[s], iteration))
        chosen = np.sort(rng.choice(n_cand, size=k, replace=False))
        i, j = cands[chosen, 0] + s, cands[chosen, 1] + s
        chunks.append((np.full(k, qids[s], dtype=object), docs[i], docs[j], ranks[i], ranks[j],
                       n_cand, k))

    if not chunks:
        return _empty_pairs()
    out = pd.DataFrame({
        "query_id": np.concatenate([c[0] for c in chunks]),
        "doc_a": np.concatenate([c[1] for c in chunks]),
        "doc_b": np.concatenate([c[2] for c in chunks]),
        "rank_a": np.concatenate([c[3] for c in chunks]).astype(np.int32),
        "rank_b": np.concatenate([c[4] for c in chunks]).astype(np.int32),
        "n_candidates": np.concatenate([np.full(len(c[0]), c[5]) for c in chunks]).astype(np.int32),
        "n_sampled": np.concatenate([np.full(len(c[0]), c[6]) for c in chunks]).astype(np.int32),
    })
    # candidates are lexicographic in positions and positions follow teacher_rank, so the frame
    # is already in (query_id, rank_a, rank_b) order; sort anyway to make the contract explicit
    return out.sort_values(["query_id", "rank_a", "rank_b"], kind="stable", ignore_index=True)


def _empty_pairs() -> pd.DataFrame:
    return pd.DataFrame({
        "query_id": pd.Series([], dtype=object), "doc_a": pd.Series([], dtype=object),
        "doc_b": pd.Series([], dtype=object), "rank_a": pd.Series([], dtype=np.int32),
        "rank_b": pd.Series([], dtype=np.int32), "n_candidates": pd.Series([], dtype=np.int32),
        "n_sampled": pd.Series([], dtype=np.int32),
    })


def pair_counts(pairs: pd.DataFrame, pointwise: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per-query counts ``(query_id, n_candidates, n_sampled)``, sorted by ``query_id``.

    From ``pairs`` alone only queries that have pairs appear; with ``pointwise`` every query of
    that frame is listed, those without pairs (fewer than 2 passages) with zeros.
    """
    counts = (pairs.groupby("query_id", sort=True)[["n_candidates", "n_sampled"]].first()
              .reset_index())
    if pointwise is not None:
        all_q = pd.DataFrame({"query_id": pd.Series(sorted(pointwise["query_id"].astype(str).unique()),
                                                     dtype=object)})  # object even when empty (a query-less shard)
        counts = all_q.merge(counts, on="query_id", how="left").fillna(0)
    counts["n_candidates"] = counts["n_candidates"].astype(np.int32)
    counts["n_sampled"] = counts["n_sampled"].astype(np.int32)
    return counts[list(COUNTS_COLUMNS)].reset_index(drop=True)
