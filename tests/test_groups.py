"""The columnar, vectorised build_groups against the per-query loop it replaced (kept here as the oracle).

Same groups in the same order, with the same passages, teacher scores, positives and pairs, the same
skip counts and the same digest, on random cases that hold every branch: labels on and off,
unlabelled queries kept or skipped, lists too short, labelled positives outside the list, several
positives in one list, pairs whose passages are not in the group or not in the list, pairs of queries
without a list, duplicated passages in a list.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from pairdistill.train import build_groups
from pairdistill.train.batches import Group, Groups, groups_digest


@dataclass
class _Group:
    query_id: str
    doc_ids: list[str]
    teacher_scores: list[float]
    positive_index: int | None
    pairs: list[tuple[int, int, float]] = field(default_factory=list)
    negatives: list[str] = field(default_factory=list)


def reference_build_groups(pointwise, pairwise, positives, *, nway, use_labels, seed, unlabelled_queries=False):
    """build_groups as it was before the columnar rewrite (commit 46fe655), verbatim."""
    rng = np.random.default_rng(seed)
    pairs_by_q = {q: df for q, df in pairwise.groupby("query_id", sort=False)}
    groups, skipped_short, skipped_unlabelled, kept_unlabelled = [], 0, 0, 0
    for qid, ranked in pointwise.sort_values(["query_id", "teacher_rank"]).groupby("query_id", sort=True):
        doc_ids = ranked["doc_id"].tolist()
        score_of = dict(zip(doc_ids, ranked["teacher_score"].astype(float)))
        pos = positives.get(qid, set())
        chosen: list[str] = []
        positive_index = None
        if use_labels:
            labelled = [d for d in doc_ids if d in pos]
            if labelled:
                chosen.append(labelled[0])
                positive_index = 0
            elif unlabelled_queries:
                positive_index = -1
            else:
                skipped_unlabelled += 1
                continue
            pool = [d for d in doc_ids if d not in pos]
        else:
            pool = list(doc_ids)
        qpairs = pairs_by_q.get(qid)
        pool_set = set(pool)
        if qpairs is not None and len(qpairs):
            order = rng.permutation(len(qpairs))
            for a, b in qpairs[["doc_a", "doc_b"]].to_numpy()[order]:
                for d in (a, b):
                    if len(chosen) < nway and d in pool_set and d not in chosen:
                        chosen.append(d)
        for d in pool:
            if len(chosen) >= nway:
                break
            if d not in chosen:
                chosen.append(d)
        if len(chosen) < nway:
            skipped_short += 1
            continue
        index = {d: i for i, d in enumerate(chosen)}
        group_pairs = []
        if qpairs is not None:
            for a, b, p in qpairs[["doc_a", "doc_b", "prob"]].itertuples(index=False):
                if a in index and b in index:
                    group_pairs.append((index[a], index[b], float(p)))
        kept_unlabelled += positive_index == -1
        groups.append(_Group(qid, chosen, [score_of[d] for d in chosen], positive_index, group_pairs))
    stats = {"groups": len(groups), "skipped_short_list": skipped_short,
             "skipped_no_positive": skipped_unlabelled, "unlabelled_groups": int(kept_unlabelled),
             "pairs_in_groups": sum(len(g.pairs) for g in groups),
             "pairs_sampled": int(len(pairwise))}
    return groups, stats


def _case(seed: int, n_queries: int = 40, n_docs: int = 60, dtype=np.float32, grouped: bool = False,
          long_ids: bool = False):
    """Pointwise lists of 0..12 passages (some duplicated), pairs inside, outside and across lists,
    one to three positives for most queries, some of them outside the list. ``long_ids``: some
    passage ids longer than the 8 bytes a packed id holds (the ids are then hashed as strings)."""
    rng = np.random.default_rng(seed)
    docs = [f"d{i}" if not long_ids or i % 7 else f"passage-{i}" for i in range(n_docs)]
    point, pair, positives = [], [], {}
    qids = [f"q{i}" for i in rng.permutation(n_queries)]  # file order is not query order
    for q in qids:
        n = int(rng.integers(0, 13))
        mine = list(rng.choice(docs, size=n, replace=False))
        if n > 2 and rng.random() < 0.1:
            mine[-1] = mine[0]  # a passage twice in one list
        ranks = rng.permutation(n) + 1
        for d, r in zip(mine, ranks):
            point.append((q, d, float(rng.normal()), int(r)))
        if rng.random() < 0.75:
            k = int(rng.integers(1, 4))
            pool = mine + docs if rng.random() < 0.5 else docs
            positives[q] = set(rng.choice(pool, size=k).tolist())
        for _ in range(int(rng.integers(0, 8))):
            a, b = rng.choice(mine if (mine and rng.random() < 0.8) else docs, size=2)
            pair.append((q, a, b, float(rng.uniform())))
    for _ in range(5):  # pairs of queries without a list
        pair.append((f"x{rng.integers(100)}", "d1", "d2", 0.5))
    if grouped:  # as the pipeline writes them: a query's rows together, best rank first (not in id order)
        point.sort(key=lambda r: (qids.index(r[0]), r[3]))
        pair.sort(key=lambda r: qids.index(r[0]) if r[0] in qids else -1)
    else:
        rng.shuffle(point)
        rng.shuffle(pair)
    pw = pd.DataFrame(point, columns=["query_id", "doc_id", "teacher_score", "teacher_rank"])
    pw["teacher_score"] = pw["teacher_score"].astype(dtype)
    pw["teacher_rank"] = pw["teacher_rank"].astype("int32")
    pr = pd.DataFrame(pair, columns=["query_id", "doc_a", "doc_b", "prob"])
    pr["prob"] = pr["prob"].astype(dtype)
    return pw, pr, positives


def _as_tuples(groups):
    return [(g.query_id, list(g.doc_ids), list(g.teacher_scores), g.positive_index, list(g.pairs))
            for g in groups]


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("use_labels,unlabelled", [(True, False), (True, True), (False, False), (False, True)])
@pytest.mark.parametrize("nway", [1, 3, 5])
def test_the_columnar_groups_are_the_loops_groups(seed, use_labels, unlabelled, nway):
    pw, pr, positives = _case(seed, grouped=seed % 2 == 1, long_ids=seed % 4 == 2)
    want, want_stats = reference_build_groups(pw, pr, positives, nway=nway, use_labels=use_labels, seed=seed,
                                              unlabelled_queries=unlabelled)
    got, stats = build_groups(pw, pr, positives, nway=nway, use_labels=use_labels, seed=seed,
                              unlabelled_queries=unlabelled)
    assert isinstance(got, Groups)
    assert _as_tuples(got) == _as_tuples(want)
    assert stats == want_stats
    assert want_stats["groups"] > 0 and (not use_labels or unlabelled or want_stats["skipped_no_positive"] > 0)
    texts = {g.query_id: f"text of {g.query_id}" for g in want}
    as_list = [Group(*t) for t in _as_tuples(want)]
    assert groups_digest(got, texts) == groups_digest(as_list, texts)


def test_arrow_tables_dictionaries_and_float64_scores_give_the_same_groups():
    pw, pr, positives = _case(11, dtype=np.float64)
    want, _ = reference_build_groups(pw, pr, positives, nway=4, use_labels=True, seed=2, unlabelled_queries=True)
    got, _ = build_groups(pa.Table.from_pandas(pw, preserve_index=False),
                          pa.Table.from_pandas(pr, preserve_index=False), positives, nway=4, use_labels=True,
                          seed=2, unlabelled_queries=True)
    assert _as_tuples(got) == _as_tuples(want)
    # ids dictionary-encoded as Parquet reads them (read_dictionary), chunk by chunk
    def chunked(frame, columns):
        table = pa.Table.from_pandas(frame, preserve_index=False)
        for c in columns:
            col = pa.chunked_array([table.column(c).slice(i, 7).combine_chunks().dictionary_encode()
                                    for i in range(0, table.num_rows, 7)])
            table = table.set_column(table.schema.get_field_index(c), c, col)
        return table

    got, _ = build_groups(chunked(pw, ["query_id", "doc_id"]), chunked(pr, ["query_id", "doc_a"]),
                          positives, nway=4, use_labels=True, seed=2, unlabelled_queries=True)
    assert _as_tuples(got) == _as_tuples(want)


def test_the_digest_follows_scores_negatives_and_positives():
    pw, pr, positives = _case(3)
    groups, _ = build_groups(pw, pr, positives, nway=3, use_labels=True, seed=0, unlabelled_queries=True)
    texts = {}
    base = groups_digest(groups, texts)
    groups[0].teacher_scores = [s + 0.1 for s in groups[0].teacher_scores]  # not a float32: kept exactly
    assert groups[0].teacher_scores[0] == pytest.approx(groups.teacher[0, 0]) and groups.teacher.dtype == np.float64
    changed = groups_digest(groups, texts)
    assert changed != base
    groups[1].negatives = ["d7", "d8"]
    assert groups[1].negatives == ["d7", "d8"] and groups_digest(groups, texts) != changed
    assert groups_digest(groups, texts) == groups_digest(groups.to_groups(), texts)


def test_no_list_at_all_is_no_group():
    pw, pr, positives = _case(0)
    got, stats = build_groups(pw.iloc[:0], pr.iloc[:0], positives, nway=3, use_labels=True, seed=0)
    assert len(got) == 0 and stats["groups"] == 0


def _with_ranks(pw: pd.DataFrame, pr: pd.DataFrame, seed: int) -> pd.DataFrame:
    """The pairs with rank_a/rank_b as the pairwise stage writes them (each passage's teacher rank
    in its query's list), some of them wrong or out of range, and some ids of one list's passages
    given with a rank of the list that holds another."""
    rng = np.random.default_rng(seed)
    rank_of = {(q, d): int(r) for q, d, r in pw[["query_id", "doc_id", "teacher_rank"]].itertuples(index=False)}
    pr = pr.copy()
    for side in ("a", "b"):
        ranks = np.array([rank_of.get((q, d), 1) for q, d in zip(pr["query_id"], pr[f"doc_{side}"])])
        wrong = rng.random(len(pr)) < 0.15
        ranks[wrong] = rng.integers(-1, 15, size=int(wrong.sum()))
        pr[f"rank_{side}"] = ranks.astype("int32")
    return pr


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("source", ["frame", "parquet"])
@pytest.mark.parametrize("long_ids", [False, True])
def test_pairs_found_by_their_ranks_give_the_same_groups(tmp_path, seed, source, long_ids):
    """rank_a/rank_b name the pair's rows of the list (no hashing of the ids where the row holds the
    same id); wrong ranks fall back to the ids, so the groups are the loop's whatever the ranks say;
    with ids packed into numbers or (long ids) as strings."""
    from pairdistill import io
    from pairdistill.train.batches import ParquetColumns

    pw, pr, positives = _case(seed, grouped=seed % 2 == 0, long_ids=long_ids)
    pr = _with_ranks(pw, pr, seed)
    want, want_stats = reference_build_groups(pw, pr, positives, nway=4, use_labels=True, seed=seed,
                                              unlabelled_queries=True)
    point_cols, pair_cols = ["query_id", "doc_id", "teacher_score", "teacher_rank"], \
        ["query_id", "doc_a", "doc_b", "rank_a", "rank_b", "prob"]
    if source == "parquet":  # the train stage's reading: the artifacts' columns one at a time
        full_pw = pw.assign(retriever_rank=pw["teacher_rank"], retriever_score=np.float32(1.0), cached=False)
        full_pr = pr.assign(p_ab=pr["prob"], p_ba=1 - pr["prob"], cached=False)
        io.write_table(full_pw, "pointwise", tmp_path / "pointwise.parquet")
        io.write_table(full_pr, "pairwise", tmp_path / "pairwise.parquet")
        pw_in = ParquetColumns(tmp_path / "pointwise.parquet", "pointwise", point_cols)
        pr_in = ParquetColumns(tmp_path / "pairwise.parquet", "pairwise", pair_cols)
    else:
        pw_in, pr_in = pw, pr
    got, stats = build_groups(pw_in, pr_in, positives, nway=4, use_labels=True, seed=seed, unlabelled_queries=True)
    assert _as_tuples(got) == _as_tuples(want)
    assert stats == want_stats and want_stats["pairs_in_groups"] > 0


def test_lists_not_ranked_1_to_n_ignore_the_ranks():
    pw, pr, positives = _case(5)
    pr = _with_ranks(pw, pr, 5)
    pw["teacher_rank"] = (pw["teacher_rank"] * 2).astype("int32")  # ranks 2, 4, ...: rank_a names no row
    want, _ = reference_build_groups(pw, pr, positives, nway=3, use_labels=False, seed=1)
    got, _ = build_groups(pw, pr, positives, nway=3, use_labels=False, seed=1)
    assert _as_tuples(got) == _as_tuples(want)


def test_packed_ids_and_their_codes():
    """Ids of up to 8 bytes as one number each (and back), None where one does not fit; the
    partitioned factorization (past 2**20 keys) gives each distinct key one code."""
    from pairdistill.train.batches import _factorize, _lookup_keys, _pack, _unpack

    ids = ["", "a", "d12345", "12345678", "é", "日本", "x y\tz", "d12345"]
    col = pa.chunked_array([pa.array(ids).slice(1), pa.array(ids[:3])])  # a sliced chunk, then another
    keys = _pack(col)
    assert _unpack(keys).to_pylist() == ids[1:] + ids[:3] and keys[1] == keys[6] and keys[0] != keys[4]
    assert _pack(pa.array(["123456789"])) is None and _pack(pa.array(["a\0"])) is None
    assert _pack(pa.array(["a", None])) is None
    rng = np.random.default_rng(0)
    many = rng.integers(0, 300_000, size=(1 << 20) + 5).astype(np.uint64) * np.uint64(1 << 40)
    codes, uniques = _factorize(many)
    assert codes.dtype == np.int32 and len(uniques) == len(np.unique(many)) == codes.max() + 1
    assert np.array_equal(uniques[codes], many)
    vocab = uniques[::3]
    found = _lookup_keys(vocab, many)
    assert np.array_equal(found >= 0, np.isin(many, vocab)) and np.array_equal(vocab[found[found >= 0]],
                                                                               many[found >= 0])
