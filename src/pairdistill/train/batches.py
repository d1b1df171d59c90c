"""A step's data: training groups (one per query), the tokenized batch a process takes of them,
where the passages of the whole batch sit, and the data position through the groups.

:func:`build_groups` makes the groups, :func:`make_batch` tokenizes a process's share of a step,
:class:`Layout` places every passage of the (gathered) batch, :func:`next_picks` draws the next
step's groups from the loop's RNG, and :func:`groups_digest` fingerprints the groups for the
resumable state.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch


@dataclass
class Group:
    query_id: str
    doc_ids: list[str]
    teacher_scores: list[float]
    positive_index: int | None  # None without labels; -1 for a kept unlabelled query
    pairs: list[tuple[int, int, float]] = field(default_factory=list)  # (i, j, P(d_i > d_j))
    negatives: list[str] = field(default_factory=list)  # mined negatives (contrastive_negatives: mined)


class GroupView:
    """Group ``i`` of a columnar :class:`Groups`, read (and its teacher scores and negatives set)
    as a :class:`Group`: the loop's batches take a few dozen of these a step."""

    __slots__ = ("_of", "_i")

    def __init__(self, of: "Groups", i: int):
        self._of, self._i = of, i

    @property
    def query_id(self) -> str:
        return self._of.query_ids[self._i].as_py()

    @property
    def doc_codes(self) -> np.ndarray:
        return self._of.doc_codes[self._i]

    @property
    def doc_ids(self) -> list[str]:
        return self._of.doc_vocab.take(pa.array(self._of.doc_codes[self._i])).to_pylist()

    @property
    def teacher_scores(self) -> list[float]:
        return self._of.teacher[self._i].tolist()

    @teacher_scores.setter
    def teacher_scores(self, values) -> None:
        values = np.asarray(values, dtype=np.float64)
        if not np.array_equal(values.astype(self._of.teacher.dtype), values):
            self._of.teacher = self._of.teacher.astype(np.float64)
        self._of.teacher[self._i] = values

    @property
    def positive_index(self) -> int | None:
        pi = self._of.positive_index
        return None if pi is None else int(pi[self._i])

    @property
    def pairs(self) -> list[tuple[int, int, float]]:
        lo, hi = self._of.pair_offsets[self._i], self._of.pair_offsets[self._i + 1]
        ij, p = self._of.pair_ij[lo:hi].tolist(), self._of.pair_prob[lo:hi].tolist()
        return [(i, j, q) for (i, j), q in zip(ij, p)]

    @property
    def negatives(self) -> list[str]:
        return self._of.negatives.get(self._i, [])

    @negatives.setter
    def negatives(self, values) -> None:
        if values:
            self._of.negatives[self._i] = list(values)
        else:
            self._of.negatives.pop(self._i, None)


class Groups(Sequence):
    """Training groups, column by column: what :func:`build_groups` returns.

    ``query_ids`` (n,) Arrow strings, in sorted order; ``doc_codes`` (n, nway) int32 rows of
    ``doc_vocab`` (Arrow strings); ``teacher`` (n, nway) the pointwise teacher's scores (the file's
    float dtype); ``positive_index`` (n,) int8 (-1 unlabelled) or None without labels; the pairs of
    group g are rows ``pair_offsets[g]:pair_offsets[g+1]`` of ``pair_ij`` (P, 2) int16 (columns in
    the group) and ``pair_prob`` (P,); ``negatives`` {group: mined negative ids}. ``groups[i]`` is
    a :class:`GroupView` with the fields of a :class:`Group`.
    """

    def __init__(self, query_ids: pa.Array, doc_vocab: pa.Array, doc_codes: np.ndarray, teacher: np.ndarray,
                 positive_index: np.ndarray | None, pair_offsets: np.ndarray, pair_ij: np.ndarray,
                 pair_prob: np.ndarray):
        self.query_ids, self.doc_vocab, self.doc_codes, self.teacher = query_ids, doc_vocab, doc_codes, teacher
        self.positive_index, self.pair_offsets, self.pair_ij, self.pair_prob = (positive_index, pair_offsets,
                                                                                pair_ij, pair_prob)
        self.negatives: dict[int, list[str]] = {}

    def __len__(self) -> int:
        return len(self.doc_codes)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return GroupView(self, i)

    def query_id_list(self) -> list[str]:
        return self.query_ids.to_pylist()

    def passage_ids(self) -> pa.Array:
        """Every passage id of the groups and their mined negatives, each once."""
        used = np.zeros(len(self.doc_vocab), dtype=bool)  # a mask, not np.unique: a sort of 51M codes
        used[self.doc_codes.ravel()] = True
        ids = self.doc_vocab.take(pa.array(np.flatnonzero(used)))
        if self.negatives:
            ids = pc.unique(pa.concat_arrays([ids.cast(pa.string()), pa.array(
                [d for v in self.negatives.values() for d in v], type=pa.string())]))
        return ids

    def to_groups(self) -> list[Group]:
        """As a list of :class:`Group` (small cases: tests)."""
        return [Group(g.query_id, g.doc_ids, g.teacher_scores, g.positive_index, g.pairs, g.negatives) for g in self]


class ParquetColumns:
    """An artifact's columns read one at a time, when :func:`build_groups` asks for them: it turns
    each into integer codes or numbers and drops it before reading the next, so the whole table
    (at MS MARCO size ~2 GB of Arrow for the pointwise file, half of it the passage ids) is never
    held at once. ``query_id`` is read dictionary-encoded, as Parquet stores it."""

    def __init__(self, path, name: str, columns: Sequence[str]):
        import pyarrow.parquet as pq

        from .. import io

        io._check_schema(path, name)
        self.path, self.column_names = str(path), list(columns)
        self.num_rows = pq.ParquetFile(self.path).metadata.num_rows

    def column(self, name: str) -> pa.ChunkedArray:
        import pyarrow.parquet as pq

        if name not in self.column_names:
            raise KeyError(f"{self.path}: column {name!r} not among those read ({', '.join(self.column_names)})")
        dictionary = [name] if name == "query_id" else None
        return pq.read_table(self.path, columns=[name], read_dictionary=dictionary).column(name)


def _column(frame, name: str):
    """A column of a DataFrame, an Arrow table or :class:`ParquetColumns`."""
    return frame.column(name) if isinstance(frame, (pa.Table, ParquetColumns)) else frame[name]


def _has(frame, name: str) -> bool:
    return name in (frame.column_names if isinstance(frame, (pa.Table, ParquetColumns)) else frame.columns)


def _rows(frame) -> int:
    return int(frame.num_rows if isinstance(frame, (pa.Table, ParquetColumns)) else len(frame))


def _strings(col, keep_dictionary: bool = False) -> pa.ChunkedArray:
    """A column of ids as Arrow strings (a dictionary-encoded one, as Parquet's own dictionaries
    read it, kept so with ``keep_dictionary``: its ids are then hashed once per row group)."""
    if isinstance(col, pa.Array):
        col = pa.chunked_array([col])
    elif not isinstance(col, pa.ChunkedArray):
        col = pa.chunked_array([pa.array(np.asarray(col, dtype=object), type=pa.string())], type=pa.string())
    if pa.types.is_dictionary(col.type):
        if keep_dictionary:
            return col
        col = col.cast(col.type.value_type)
    return col if col.type == pa.string() else col.cast(pa.string())


def _encode(col) -> tuple[pa.Array, np.ndarray]:
    """(unique ids, each row's int64 index into them) of a column of ids."""
    col = _strings(col, keep_dictionary=True)
    if pa.types.is_dictionary(col.type):
        if col.num_chunks == 0:
            return pa.array([], type=pa.string()), np.zeros(0, dtype=np.int64)
        col = col.unify_dictionaries()
        vocab = _strings(col.chunks[0].dictionary).combine_chunks()
        idx = _indices(col.chunks)
        if len(pc.unique(vocab)) == len(vocab):
            return vocab, idx
        col = pa.chunked_array([vocab.take(pa.array(idx))])
    return _codes(col.dictionary_encode())


def _flat(col: pa.ChunkedArray) -> pa.Array:
    """One array of a column of strings (large strings past 2 GB of text), for repeated takes."""
    if col.nbytes >= 2**31 - 1:
        col = col.cast(pa.large_string())
    return col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)


def _numbers(col) -> np.ndarray:
    if isinstance(col, (pa.Array, pa.ChunkedArray)):
        return col.to_numpy()
    return np.asarray(col)


def _indices(chunks) -> np.ndarray:
    """The indices of dictionary chunks, concatenated as int32 (int64 past 2**31 entries)."""
    idx = np.concatenate([c.indices.to_numpy(zero_copy_only=False) for c in chunks]) if chunks else \
        np.zeros(0, dtype=np.int32)
    return idx if idx.dtype in (np.int32, np.int64) else idx.astype(np.int64)


def _codes(encoded: pa.ChunkedArray) -> tuple[pa.Array, np.ndarray]:
    """(dictionary, int32/int64 indices) of a dictionary-encoded chunked array (one dictionary for all chunks)."""
    if encoded.num_chunks == 0:
        return pa.array([], type=pa.string()), np.zeros(0, dtype=np.int32)
    return encoded.chunks[-1].dictionary, _indices(encoded.chunks)


def _lookup(vocab: pa.Array, values) -> np.ndarray:
    """Each value's row in ``vocab`` (unique strings), -1 where it is not there (one hash pass)."""
    values = _strings(values, keep_dictionary=True)
    if len(values) == 0:
        return np.zeros(0, dtype=np.int64)
    if pa.types.is_dictionary(values.type):
        unique, idx = _encode(values)
        return _lookup(vocab, unique)[idx]
    _, idx = _codes(pa.chunked_array([vocab, *values.chunks], type=pa.string()).dictionary_encode())
    idx = idx[len(vocab):]
    idx[idx >= len(vocab)] = -1
    return idx


_BYTE_MASKS = np.array([(1 << (8 * n)) - 1 for n in range(8)] + [(1 << 64) - 1], dtype=np.uint64)


def _pack(col) -> np.ndarray | None:
    """Each id of a column of strings as one uint64 (its UTF-8 bytes, little-endian, zero-padded):
    a number that stands for the id, where every id is at most 8 bytes long and holds no NUL byte
    (MS MARCO's are digits); else None. Read straight from the Arrow buffers, a chunk at a time."""
    col = _strings(col)
    out = np.empty(len(col), dtype=np.uint64)
    at = 0
    for c in col.chunks:
        n = len(c)
        if not n:
            continue
        if c.null_count:
            return None
        off = np.frombuffer(c.buffers()[1], dtype=np.int32, count=n + 1, offset=c.offset * 4)
        lo, hi = int(off[0]), int(off[-1])
        lens = np.diff(off)
        if lens.max() > 8:
            return None
        padded = np.zeros(hi - lo + 8, dtype=np.uint8)
        if hi > lo:
            padded[:hi - lo] = np.frombuffer(c.buffers()[2], dtype=np.uint8, count=hi - lo, offset=lo)
            if not padded[:hi - lo].all():
                return None
        words = np.ndarray((hi - lo + 1,), dtype="<u8", buffer=padded, strides=(1,))  # 8 bytes from each byte
        out[at:at + n] = words[off[:-1] - lo] & _BYTE_MASKS[lens]
        at += n
    return out


def _unpack(keys: np.ndarray) -> pa.Array:
    """The ids that :func:`_pack` made ``keys`` of."""
    ids = pa.array(keys.astype("<u8").view("S8"), type=pa.binary()).cast(pa.string())
    return ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids  # NumPy's bytes come in chunks


FACTORIZE_BUCKETS = 64  # hash partitions: each one's table fits a CPU cache, where one of 8.8M ids does not


def _factorize(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int32 code of each key, the distinct keys): pandas' hash table run on one hash partition of
    the keys at a time, which is ~2x faster than one table over 80M keys (random memory reads)."""
    import pandas as pd

    if len(keys) < (1 << 20):
        codes, uniques = pd.factorize(keys)
        return codes.astype(np.int32), np.asarray(uniques, dtype=np.uint64)
    part = ((keys * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(64 - 6)).astype(np.uint8)
    by_part = np.argsort(part, kind="stable")
    ends = np.cumsum(np.bincount(part, minlength=FACTORIZE_BUCKETS))
    del part
    codes = np.empty(len(keys), dtype=np.int32)
    uniques, base, lo = [], 0, 0
    for hi in ends.tolist():
        rows = by_part[lo:hi]
        c, u = pd.factorize(keys[rows])
        codes[rows] = c + base
        uniques.append(np.asarray(u, dtype=np.uint64))
        base, lo = base + len(u), hi
    return codes, np.concatenate(uniques)


def _lookup_keys(vocab_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Each key's row in ``vocab_keys`` (distinct), -1 where it is not there."""
    codes, uniques = _factorize(np.concatenate([vocab_keys, keys]))
    row = np.full(len(uniques), -1, dtype=np.int32)
    row[codes[:len(vocab_keys)]] = np.arange(len(vocab_keys), dtype=np.int32)
    return row[codes[len(vocab_keys):]]


def _lookup_ids(vocab: pa.Array, vocab_keys: np.ndarray | None, values) -> np.ndarray:
    """:func:`_lookup`, on packed ids where both sides pack."""
    keys = _pack(values) if vocab_keys is not None else None
    return _lookup(vocab, values) if keys is None else _lookup_keys(vocab_keys, keys)


def _encode_ids(frame, name: str) -> tuple[pa.Array, np.ndarray | None, np.ndarray]:
    """(distinct ids, their packed keys or None, each row's int32 code) of a column of passage ids:
    packed and factorized where the ids pack (:func:`_pack`), else hashed as strings by Arrow. A
    :class:`ParquetColumns` column is packed a row group at a time (the strings never all held)."""
    keys = None
    if isinstance(frame, ParquetColumns):
        import pyarrow.parquet as pq

        parts = []
        for batch in pq.ParquetFile(frame.path).iter_batches(batch_size=1 << 20, columns=[name]):
            part = _pack(batch.column(0))
            if part is None:
                parts = None
                break
            parts.append(part)
        if parts is not None:
            keys = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)
    else:
        keys = _pack(_column(frame, name))
    if keys is None:
        vocab, codes = _encode(_column(frame, name))
        return vocab, None, codes
    codes, uniques = _factorize(keys)
    return _unpack(uniques), uniques, codes


def _runs(sorted_q: np.ndarray) -> np.ndarray:
    """Where each run of equal values of ``sorted_q`` starts."""
    if not len(sorted_q):
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([[0], np.flatnonzero(sorted_q[1:] != sorted_q[:-1]) + 1])


def _order(codes: np.ndarray, then: np.ndarray | None = None) -> np.ndarray:
    """The stable order of rows by ``codes`` (then ``then``): one pass when the rows of each code
    are already together (and ``then`` ascending within them), as the pipeline writes its files."""
    starts = _runs(codes)
    n = len(codes)
    ordered = then is None or bool(np.all((np.diff(then) > 0) | (np.diff(codes) != 0)))
    if len(starts) != len(np.unique(codes[starts])) or not ordered:
        return np.lexsort((then, codes)) if then is not None else np.argsort(codes, kind="stable")
    lens = np.diff(np.append(starts, n))
    by = np.argsort(codes[starts], kind="stable")
    first = starts[by]
    out_starts = np.concatenate([[0], np.cumsum(lens[by])[:-1]])
    return np.arange(n) + np.repeat(first - out_starts, lens[by])


def _ranked_1_to_n(ranks: np.ndarray, starts: np.ndarray) -> bool:
    """Whether the rows, sorted by query then rank, rank each query's list 1, 2, ... its length."""
    if not len(ranks):
        return True
    if not np.all(ranks[starts[:-1]] == 1):
        return False
    step = np.diff(ranks)
    step[starts[1:-1] - 1] = 1  # across two lists
    return bool(np.all(step == 1))


def _member(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    if not len(sorted_keys):
        return np.zeros(len(keys), dtype=bool)
    at = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return sorted_keys[at] == keys


KEY_CHUNK = 1 << 23      # rows whose int64 keys (or compared ids) are computed at once
BLOCK_QUERIES = 16_384  # queries grouped at once: bounds the temporaries whatever the number of queries
BLOCK_CELLS = 1 << 22   # and queries x the longest list among them


def _block(q0, q1, q_pw, d_pw, scores, is_pos, starts, eligible, has_label, first_label, use_labels,
           pair_q, pair_a, pair_b, pair_p, pair_starts, nway, M, rng) -> dict:
    """The groups of queries ``q0 .. q1-1`` (sorted codes), on a (queries, list positions) grid.

    Every passage a query may take is a position of its list (its first, if listed twice); each
    position gets the time it is first offered, positive 0, the pairs' passages 1 + their place in
    the permuted pair order, the pool 1 + 2 * pairs + position; a group is the nway earliest."""
    nb = q1 - q0
    r0, r1 = starts[q0], starts[q1]
    bq, bd = q_pw[r0:r1].astype(np.int64) - q0, d_pw[r0:r1].astype(np.int64)  # int64: keys q * M + d
    bs, bpos = scores[r0:r1], is_pos[r0:r1]
    width = max(1, int(np.diff(starts[q0:q1 + 1]).max()))
    pos_in_list = np.arange(r1 - r0) - (starts[q0:q1] - r0)[bq]
    # (query, passage) -> its first and last row: one stable sort of the block's keys
    keys = bq * M + bd
    by_key = np.argsort(keys, kind="stable")
    sorted_keys = keys[by_key]
    run = _runs(sorted_keys)
    run_of = np.empty(len(keys), dtype=np.int64)
    run_of[by_key] = np.repeat(np.arange(len(run)), np.diff(np.append(run, len(keys))))
    first_row = by_key[run]                                      # rows are in rank order: the first is the best
    last_row = by_key[np.append(run[1:], len(keys)) - 1]
    canon = pos_in_list[first_row][run_of]                        # each row's passage at its first position
    score_at = np.zeros((nb, width), dtype=bs.dtype)
    score_at[bq[first_row], pos_in_list[first_row]] = bs[last_row]  # as a dict of the list: its last score

    def where(q, d):
        """First list position of passage d in query q's list, -1 where it is not in it."""
        k = q * M + d
        at = np.minimum(np.searchsorted(sorted_keys, k), max(len(sorted_keys) - 1, 0))
        hit = sorted_keys[at] == k if len(sorted_keys) else np.zeros(len(k), dtype=bool)
        return np.where(hit, canon[by_key[at]] if len(sorted_keys) else 0, -1)

    belig = eligible[q0:q1]
    pool = belig[bq] & ~bpos
    s0, s1 = pair_starts[q0], pair_starts[q1]
    aq, ap = pair_q[s0:s1].astype(np.int64) - q0, pair_p[s0:s1]
    ja, jb = where(aq, pair_a[s0:s1]), where(aq, pair_b[s0:s1])
    seg = pair_starts[q0:q1 + 1] - s0
    perm = np.arange(len(aq))
    for q in np.flatnonzero(np.diff(seg)).tolist():
        lo, hi = seg[q], seg[q + 1]
        perm[lo:hi] = lo + rng.permutation(hi - lo)
    # when each list position is first offered
    never = np.iinfo(np.int64).max
    offered = np.full((nb, width), never, dtype=np.int64)
    late = 1 + 2 * int(np.diff(seg).max(initial=0))
    offered[bq[pool], canon[pool]] = late + canon[pool]
    t = np.arange(2 * len(aq)) - 2 * np.repeat(seg[:-1], 2 * np.diff(seg))  # place in the query's (a, b) sequence
    cq, cj = np.repeat(aq, 2), np.stack([ja[perm], jb[perm]], axis=1).ravel()
    ok = cj >= 0
    ok[ok] = pool[starts[q0 + cq[ok]] - r0 + cj[ok]]
    np.minimum.at(offered, (cq[ok], cj[ok]), 1 + t[ok])
    if use_labels:
        lab = np.flatnonzero(has_label[q0:q1])
        offered[lab, first_label[q0 + lab] - starts[q0 + lab]] = 0
    take = np.argsort(offered, axis=1, kind="stable")[:, :nway]
    got = np.take_along_axis(offered, take, axis=1) < never
    full = got.all(axis=1) & belig if take.shape[1] == nway else np.zeros(nb, dtype=bool)
    kept = np.flatnonzero(full)
    cols = take[kept]
    col_of = np.full((len(kept), width), -1, dtype=np.int64)
    np.put_along_axis(col_of, cols, np.arange(nway)[None, :], axis=1)
    local = np.full(nb, -1, dtype=np.int64)
    local[kept] = np.arange(len(kept))
    rows = starts[q0 + kept][:, None] + cols
    # the pairs (file order) with both passages in the group
    g = local[aq]
    inside = (g >= 0) & (ja >= 0) & (jb >= 0)
    ia = np.where(inside, col_of[np.maximum(g, 0), np.maximum(ja, 0)], -1)
    ib = np.where(inside, col_of[np.maximum(g, 0), np.maximum(jb, 0)], -1)
    inside &= (ia >= 0) & (ib >= 0)
    return {"short": int((belig & ~full).sum()), "q": kept + q0, "codes": d_pw[rows].astype(np.int32),
            "scores": score_at[kept[:, None], cols], "pos": np.where(has_label[q0 + kept], 0, -1).astype(np.int8),
            "counts": np.bincount(g[inside], minlength=len(kept)),
            "ij": np.stack([ia[inside], ib[inside]], axis=1).astype(np.int16), "prob": ap[inside]}


def build_groups(pointwise, pairwise, positives: dict[str, set[str]], *,
                 nway: int, use_labels: bool, seed: int,
                 unlabelled_queries: bool = False) -> tuple[Groups, dict]:
    """Training groups of exactly ``nway`` passages; returns them and counts of what was skipped.

    One group per query of ``pointwise`` (a DataFrame or an Arrow table with query_id, doc_id,
    teacher_score, teacher_rank), in sorted query order: the labelled positive first (with
    ``use_labels``), then the passages of the query's sampled pairs (``pairwise``: query_id, doc_a,
    doc_b, prob) in a random order (one ``rng.permutation`` of its pairs per query that gets this
    far), then the best teacher-ranked rest, each passage once; with the teacher's scores and the
    pairs (in file order) whose two passages are both in the group.

    With ``use_labels``, a query needs a labelled positive in its list (the pointwise stage adds
    every labelled positive to it) and the other labelled positives are left out of the group,
    since the contrastive term would push them down as negatives. With ``unlabelled_queries``
    too, a query without one is kept with ``positive_index = -1``: its group is built from the
    teacher's ranked list as without labels, and the loss gives it no contrastive term.

    Computed on integer codes of the ids, a block of queries at a time (:data:`BLOCK_QUERIES`),
    into a columnar :class:`Groups`; no Python object per passage.
    """
    rng = np.random.default_rng(seed)
    n_pairs_sampled = _rows(pairwise)
    # queries: sorted codes; passages: codes in order of first appearance (ND: "not a passage of any list")
    q_dict, q_raw = _encode(_column(pointwise, "query_id"))
    by_name = np.asarray(pc.array_sort_indices(q_dict), dtype=np.int64)
    q_vocab = q_dict.take(pa.array(by_name))
    q_rank = np.empty(len(q_dict), dtype=np.int32)
    q_rank[by_name] = np.arange(len(q_dict), dtype=np.int32)
    q_pw = q_rank[q_raw]
    del q_raw
    d_vocab, d_keys, d_pw = _encode_ids(pointwise, "doc_id")
    nq, nd = len(q_vocab), len(d_vocab)
    M = nd + 1
    if nq == 0:
        empty = Groups(q_vocab, d_vocab, np.zeros((0, nway), dtype=np.int32), np.zeros((0, nway)),
                       np.zeros(0, dtype=np.int8) if use_labels else None, np.zeros(1, dtype=np.int64),
                       np.zeros((0, 2), dtype=np.int16), np.zeros(0, dtype=np.float32))
        return empty, {"groups": 0, "skipped_short_list": 0, "skipped_no_positive": 0, "unlabelled_groups": 0,
                       "pairs_in_groups": 0, "pairs_sampled": n_pairs_sampled}
    scores = _numbers(_column(pointwise, "teacher_score"))
    if scores.dtype not in (np.float32, np.float64):
        scores = scores.astype(np.float64)
    ranks = _numbers(_column(pointwise, "teacher_rank"))
    order = _order(q_pw, ranks)
    q_pw, d_pw, scores, ranks = q_pw[order], d_pw[order], scores[order], ranks[order]
    del order
    starts = np.searchsorted(q_pw, np.arange(nq + 1))
    lens = np.diff(starts)
    # each list ranked 1, 2, ... n (as the pipeline writes it): a pair's rank_a is then its row's place
    ranked = _ranked_1_to_n(ranks, starts)
    del ranks

    # labelled positives, as sorted (query, passage) keys; the teacher's best-ranked one per query
    has_label = np.zeros(nq, dtype=bool)
    first_label = np.zeros(nq, dtype=np.int64)
    is_pos = np.zeros(len(q_pw), dtype=bool)
    if use_labels and positives:
        pq_ids = [q for q, docs in positives.items() for _ in docs]
        pd_ids = [d for docs in positives.values() for d in docs]
        pq = _lookup(q_dict, pa.chunked_array([pa.array(pq_ids, type=pa.string())]))
        pq = np.where(pq >= 0, q_rank[np.maximum(pq, 0)], -1).astype(np.int64)
        pdoc = _lookup_ids(d_vocab, d_keys, pa.chunked_array([pa.array(pd_ids, type=pa.string())]))
        ok = (pq >= 0) & (pdoc >= 0)
        pos_keys = np.unique(pq[ok] * M + pdoc[ok])
        for lo in range(0, len(q_pw), KEY_CHUNK):  # (query, passage) keys in int64, a chunk of rows at a time
            hi = min(len(q_pw), lo + KEY_CHUNK)
            is_pos[lo:hi] = _member(pos_keys, q_pw[lo:hi].astype(np.int64) * M + d_pw[lo:hi])
        rows = np.flatnonzero(is_pos)
        labelled_q, first = np.unique(q_pw[rows], return_index=True)
        has_label[labelled_q] = True
        first_label[labelled_q] = rows[first]
    eligible = has_label | unlabelled_queries if use_labels else np.ones(nq, dtype=bool)

    # pairs of the eligible queries, by query, in file order within one
    pq_all = _lookup(q_dict, _column(pairwise, "query_id"))
    pq_all = np.where(pq_all >= 0, q_rank[np.maximum(pq_all, 0)], -1).astype(np.int32)
    keep = pq_all >= 0
    keep[keep] = eligible[pq_all[keep]]
    pair_rows = np.flatnonzero(keep)
    pair_rows = pair_rows[_order(pq_all[pair_rows])]
    pair_q = pq_all[pair_rows]
    del pq_all, keep
    hinted = ranked and _has(pairwise, "rank_a") and _has(pairwise, "rank_b")

    def _docs(name):
        """The passage codes of one side of the pairs (nd: not a passage of any list). Where the
        pair's rank names a row of its query's list that holds the same id (a string comparison,
        no hashing), that row's code; the rest looked up by hashing their ids."""
        ids = _flat(_strings(_column(pairwise, name)))
        codes = np.full(len(pair_rows), -1, dtype=np.int32)
        keys = _pack(ids) if d_keys is not None else None
        if keys is not None:  # the ids as numbers: compared and looked up as numbers
            keys = keys[pair_rows]
            del ids
            if hinted and len(pair_rows):
                rank = _numbers(_column(pairwise, f"rank_{name[-1]}"))[pair_rows].astype(np.int64)
                inside = (rank >= 1) & (rank <= lens[pair_q])
                cand = d_pw[np.where(inside, starts[pair_q] + rank - 1, 0)]
                del rank
                same = inside & (d_keys[cand] == keys)
                codes[same] = cand[same]
                del cand, same, inside
            rest = np.flatnonzero(codes < 0)
            if len(rest):
                codes[rest] = _lookup_keys(d_keys, keys[rest])
            codes[codes < 0] = nd
            return codes
        if hinted and len(pair_rows):
            rank = _numbers(_column(pairwise, f"rank_{name[-1]}"))[pair_rows].astype(np.int64)
            inside = (rank >= 1) & (rank <= lens[pair_q])
            row = np.where(inside, starts[pair_q] + rank - 1, 0)
            del rank
            for lo in range(0, len(pair_rows), KEY_CHUNK):
                hi = min(len(pair_rows), lo + KEY_CHUNK)
                cand = d_pw[row[lo:hi]]
                same = pc.equal(ids.take(pa.array(pair_rows[lo:hi])),
                                d_vocab.take(pa.array(cand)).cast(ids.type)).to_numpy(zero_copy_only=False)
                same &= inside[lo:hi]
                codes[lo:hi][same] = cand[same]
            del row, inside
        rest = np.flatnonzero(codes < 0)
        if len(rest):
            codes[rest] = _lookup(d_vocab, ids.take(pa.array(pair_rows[rest])))  # ids that do not pack
        codes[codes < 0] = nd
        return codes

    pair_a, pair_b = _docs("doc_a"), _docs("doc_b")
    pair_p = _numbers(_column(pairwise, "prob"))[pair_rows] if len(pair_rows) else np.zeros(0, dtype=np.float32)
    del pair_rows
    pair_starts = np.searchsorted(pair_q, np.arange(nq + 1))

    out_q, out_codes, out_scores, out_pos, out_counts, out_ij, out_prob = [], [], [], [], [], [], []
    skipped_short = 0
    q0 = 0
    while q0 < nq:
        q1 = min(nq, q0 + BLOCK_QUERIES)
        q1 = q0 + max(1, min(q1 - q0, BLOCK_CELLS // max(1, int(lens[q0:q1].max()))))
        out = _block(q0, q1, q_pw, d_pw, scores, is_pos, starts, eligible, has_label, first_label, use_labels,
                     pair_q, pair_a, pair_b, pair_p, pair_starts, nway, M, rng)
        skipped_short += out.pop("short")
        for part, store in (("q", out_q), ("codes", out_codes), ("scores", out_scores), ("pos", out_pos),
                            ("counts", out_counts), ("ij", out_ij), ("prob", out_prob)):
            store.append(out[part])
        q0 = q1

    def _cat(parts, shape, dtype):
        return np.concatenate(parts) if parts else np.zeros(shape, dtype=dtype)

    gq = _cat(out_q, 0, np.int64)
    counts = _cat(out_counts, 0, np.int64)
    offsets = np.zeros(len(gq) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    positive_index = _cat(out_pos, 0, np.int8) if use_labels else None
    groups = Groups(q_vocab.take(pa.array(gq, type=pa.int64())), d_vocab,
                    _cat(out_codes, (0, nway), np.int32), _cat(out_scores, (0, nway), scores.dtype),
                    positive_index, offsets, _cat(out_ij, (0, 2), np.int16), _cat(out_prob, 0, pair_p.dtype))
    stats = {"groups": len(groups), "skipped_short_list": skipped_short,
             "skipped_no_positive": int((~eligible).sum()),
             "unlabelled_groups": int((positive_index == -1).sum()) if use_labels else 0,
             "pairs_in_groups": int(offsets[-1]), "pairs_sampled": n_pairs_sampled}
    return groups, stats


def in_batch_positive(positive_index: torch.Tensor, nway: int) -> torch.Tensor:
    """Group-local positive columns (B,) -> columns of the (B, B*nway) in-batch score matrix.

    Query b's positive is column ``b*nway + positive_index[b]``; an unlabelled query (-1) stays
    -1, so no column of the wide matrix (least of all the previous group's last passage) is taken
    as its positive.
    """
    rows = torch.arange(positive_index.shape[0], device=positive_index.device)
    return torch.where(positive_index >= 0, rows * nway + positive_index, torch.full_like(positive_index, -1))


@dataclass
class Batch:
    """One process's share of a step, tokenized: ``b`` queries, their ``b * nway`` group passages
    (query-major), then their extra (mined) negatives, ``extra_owner[k]`` the query of extra k."""
    q_ids: torch.Tensor
    q_mask: torch.Tensor
    d_ids: torch.Tensor
    d_mask: torch.Tensor
    teacher: torch.Tensor                  # (b, nway) pointwise teacher scores
    pair_index: torch.Tensor               # (P, 3) long: (row, i, j)
    teacher_prob: torch.Tensor             # (P,)
    positive_index: torch.Tensor | None    # (b,) long, -1 unlabelled; None without labels
    extra_owner: torch.Tensor              # (E,) long
    nway: int

    @property
    def size(self) -> int:
        return int(self.q_ids.shape[0])

    def passage_rows(self, lo: int, hi: int) -> torch.Tensor:
        """Rows of ``d_ids`` that belong to queries ``lo .. hi-1``: their groups, then their extras."""
        group = torch.arange(lo * self.nway, hi * self.nway)
        owner = self.extra_owner.cpu()
        extra = self.size * self.nway + torch.nonzero((owner >= lo) & (owner < hi)).flatten()
        return torch.cat([group, extra])


def make_batch(groups: list[Group], qtok, dtok, query_texts: dict[str, str], corpus_texts: dict[str, str],
               nway: int, use_labels: bool, device: torch.device | str = "cpu") -> Batch:
    q_ids, q_mask = qtok.tensorize([query_texts[g.query_id] for g in groups])
    texts = [corpus_texts[d] for g in groups for d in g.doc_ids] + [corpus_texts[d] for g in groups for d in g.negatives]
    d_ids, d_mask = dtok.tensorize(texts)
    pair_rows = [(r, i, j, p) for r, g in enumerate(groups) for i, j, p in g.pairs]
    return Batch(
        q_ids=q_ids, q_mask=q_mask, d_ids=d_ids, d_mask=d_mask,
        teacher=torch.tensor([g.teacher_scores for g in groups], dtype=torch.float32, device=device),
        pair_index=torch.tensor([p[:3] for p in pair_rows], dtype=torch.long, device=device).view(-1, 3),
        teacher_prob=torch.tensor([p[3] for p in pair_rows], dtype=torch.float32, device=device),
        positive_index=(torch.tensor([g.positive_index for g in groups], dtype=torch.long, device=device)
                        if use_labels else None),
        extra_owner=torch.tensor([r for r, g in enumerate(groups) for _ in g.negatives], dtype=torch.long,
                                 device=device),
        nway=nway)


@dataclass
class Layout:
    """Where the passages of the whole (gathered) batch sit: column ``c`` of the wide score matrix
    belongs to query ``owner[c]`` and is its group passage ``group_pos[c]`` (-1: an extra negative);
    ``group_cols[b, k]`` is the column of query b's group passage k."""
    group_cols: torch.Tensor
    owner: torch.Tensor
    group_pos: torch.Tensor


def _layout(shares: list[tuple[int, torch.Tensor]], nway: int, device) -> Layout:
    """From each process's (queries, extra_owner), in process order (one entry: a single process)."""
    cols, owner, pos = [], [], []
    row = col = 0
    for b, extra_owner in shares:
        local = torch.arange(b, device=device)
        cols.append(col + local[:, None] * nway + torch.arange(nway, device=device)[None, :])
        owner += [row + local.repeat_interleave(nway), row + extra_owner.to(device)]
        pos += [torch.arange(nway, device=device).repeat(b), torch.full((len(extra_owner),), -1, device=device)]
        row, col = row + b, col + b * nway + len(extra_owner)
    return Layout(torch.cat(cols).long(), torch.cat(owner).long(), torch.cat(pos).long())


def groups_digest(groups, query_texts: dict[str, str]) -> str:
    """sha256 over every group (query and its text, positive, passages, teacher scores, pairs).

    Built from a few large buffers rather than per group, so ~800K groups take a few seconds; a
    columnar :class:`Groups` and the same groups as a list of :class:`Group` give the same digest.
    """
    if isinstance(groups, Groups):
        return _columnar_digest(groups, query_texts)
    from itertools import chain

    h = hashlib.sha256()
    h.update("\x1e".join(f"{g.query_id}\x1f{query_texts.get(g.query_id)}\x1f{g.positive_index}\x1f"
                          + "\x1f".join(g.doc_ids) for g in groups).encode())
    h.update(np.fromiter((len(g.teacher_scores) for g in groups), dtype=np.int64, count=len(groups)).tobytes())
    h.update(np.fromiter(chain.from_iterable(g.teacher_scores for g in groups), dtype=np.float64).tobytes())
    h.update(np.fromiter((len(g.pairs) for g in groups), dtype=np.int64, count=len(groups)).tobytes())
    h.update(np.fromiter(chain.from_iterable(x for g in groups for x in g.pairs), dtype=np.float64).tobytes())
    if any(g.negatives for g in groups):
        h.update("\x1e".join("\x1f".join(g.negatives) for g in groups).encode())
    return h.hexdigest()


DIGEST_CHUNK = 65_536  # groups per piece of the digest's text


def _columnar_digest(groups: Groups, query_texts: dict[str, str]) -> str:
    """:func:`groups_digest` of a :class:`Groups`: the same bytes, fed piece by piece."""
    h = hashlib.sha256()
    n, nway = groups.doc_codes.shape if len(groups) else (0, 0)
    qids = groups.query_id_list()
    pis = groups.positive_index.tolist() if groups.positive_index is not None else [None] * n
    for lo in range(0, n, DIGEST_CHUNK):
        hi = min(n, lo + DIGEST_CHUNK)
        docs = groups.doc_vocab.take(pa.array(groups.doc_codes[lo:hi].ravel()))
        lists = pa.ListArray.from_arrays(pa.array(np.arange(0, (hi - lo) * nway + 1, nway, dtype=np.int32)),
                                         docs.cast(pa.string()))
        joined = pc.binary_join(lists, "\x1f").to_pylist()
        text = "\x1e".join(f"{q}\x1f{query_texts.get(q)}\x1f{p}\x1f{d}"
                           for q, p, d in zip(qids[lo:hi], pis[lo:hi], joined))
        h.update((("\x1e" if lo else "") + text).encode())
    h.update(np.full(n, nway, dtype=np.int64).tobytes())
    h.update(groups.teacher.astype(np.float64).tobytes())
    h.update(np.diff(groups.pair_offsets).astype(np.int64).tobytes())
    h.update(np.column_stack([groups.pair_ij.astype(np.float64), groups.pair_prob.astype(np.float64)]).tobytes())
    if groups.negatives:
        h.update("\x1e".join("\x1f".join(groups.negatives.get(i, [])) for i in range(n)).encode())
    return h.hexdigest()


def _next_local(groups_n: int, want: int, rng: np.random.Generator, pos_state: dict) -> list[int]:
    """``want`` group indices from this process's share, starting a new permutation of it (a new
    local epoch) whenever one runs out, so every process takes the same number each step."""
    out: list[int] = []
    while len(out) < want:
        if pos_state["order"] is None or pos_state["pos"] >= len(pos_state["order"]):
            pos_state["order"], pos_state["pos"], pos_state["epoch"] = rng.permutation(groups_n), 0, pos_state["epoch"] + 1
        take = pos_state["order"][pos_state["pos"]:pos_state["pos"] + want - len(out)]
        pos_state["pos"] += len(take)
        out.extend(int(i) for i in take)
    return out


def next_picks(groups_n: int, want: int, rng: np.random.Generator, pos_state: dict, world: int = 1):
    """The next step's group indices, advancing the data position ``pos_state`` (its ``epoch``, that
    epoch's permutation ``order`` and the ``pos`` reached in it) in place. One process takes up to
    ``want`` from the current epoch, so an epoch's last step may be short; several fill every step
    (:func:`_next_local`)."""
    if world > 1:
        return _next_local(groups_n, want, rng, pos_state)
    if pos_state["order"] is None or pos_state["pos"] >= len(pos_state["order"]):
        pos_state["order"], pos_state["pos"], pos_state["epoch"] = rng.permutation(groups_n), 0, pos_state["epoch"] + 1
    picked = pos_state["order"][pos_state["pos"]:pos_state["pos"] + want]
    pos_state["pos"] += len(picked)
    return picked
