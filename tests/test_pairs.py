"""Pair sampling: window, counts, determinism, sharding invariance, edge cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pairdistill.io import to_table
from pairdistill.pairs import (candidate_pairs, n_candidate_pairs, pair_counts, query_seed,
                               sample_pairs)


def make_pointwise(sizes: dict[str, int], seed: int = 0) -> pd.DataFrame:
    """A pointwise frame: query q has sizes[q] passages with teacher ranks 1..n."""
    rng = np.random.default_rng(seed)
    rows = []
    for q, n in sizes.items():
        teacher = rng.permutation(n) + 1
        for k in range(n):
            rows.append({"query_id": q, "doc_id": f"{q}-d{k}", "retriever_rank": k + 1,
                         "retriever_score": float(n - k), "teacher_score": float(-teacher[k]),
                         "teacher_rank": int(teacher[k])})
    return pd.DataFrame(rows)


def expected_count(n: int, delta: int) -> int:
    return sum(n - g for g in range(1, min(delta, n)))


# --- candidate_pairs ---------------------------------------------------------------------------

@pytest.mark.parametrize("n", [0, 1, 2, 3, 5, 10, 30])
@pytest.mark.parametrize("delta", [1, 2, 3, 5, 10, 50])
def test_candidate_pairs_match_brute_force(n, delta):
    got = candidate_pairs(n, delta)
    brute = [(i, j) for i in range(n) for j in range(i + 1, n) if j - i < delta]
    assert got.shape == (len(brute), 2)
    assert [tuple(r) for r in got.tolist()] == brute            # lexicographic
    assert len(got) == expected_count(n, delta) if delta >= 2 else len(got) == 0
    if delta >= 2:
        assert n_candidate_pairs(n, delta) == expected_count(n, delta)


def test_candidate_pairs_returns_a_copy():
    a = candidate_pairs(5, 3)
    a[0, 0] = 99
    assert candidate_pairs(5, 3)[0, 0] == 0


def test_candidate_count_formula_values():
    assert len(candidate_pairs(100, 2)) == 99            # adjacent pairs only
    assert len(candidate_pairs(100, 100)) == 100 * 99 // 2
    assert len(candidate_pairs(30, 10)) == sum(30 - g for g in range(1, 10))


# --- sample_pairs ------------------------------------------------------------------------------

SIZES = {"q1": 30, "q2": 12, "q3": 5, "q4": 2, "q5": 1, "q10": 20}


def test_output_schema_and_order():
    pw = make_pointwise(SIZES)
    pairs = sample_pairs(pw, delta=4, pairs_per_query=10, seed=0)
    to_table(pairs, "pairs")                                       # matches the io schema
    assert list(pairs.columns) == ["query_id", "doc_a", "doc_b", "rank_a", "rank_b",
                                   "n_candidates", "n_sampled"]
    key = pairs[["query_id", "rank_a", "rank_b"]]
    assert key.equals(key.sort_values(["query_id", "rank_a", "rank_b"], ignore_index=True))
    assert not pairs.duplicated(["query_id", "doc_a", "doc_b"]).any()


@pytest.mark.parametrize("delta,m", [(2, 1), (2, 50), (4, 10), (10, 5), (100, 1000)])
def test_window_and_counts(delta, m):
    pw = make_pointwise(SIZES)
    pairs = sample_pairs(pw, delta=delta, pairs_per_query=m, seed=3)
    diff = pairs["rank_b"] - pairs["rank_a"]
    assert ((diff > 0) & (diff < delta)).all()
    # doc_a / doc_b carry the teacher ranks they are said to have
    rank_of = pw.set_index(["query_id", "doc_id"])["teacher_rank"]
    assert (rank_of.loc[list(zip(pairs.query_id, pairs.doc_a))].to_numpy() == pairs.rank_a).all()
    assert (rank_of.loc[list(zip(pairs.query_id, pairs.doc_b))].to_numpy() == pairs.rank_b).all()
    for q, n in SIZES.items():
        sub = pairs[pairs.query_id == q]
        cand = expected_count(n, delta)
        assert len(sub) == min(m, cand)
        if len(sub):
            assert (sub.n_candidates == cand).all()
            assert (sub.n_sampled == len(sub)).all()


def test_short_lists():
    pw = make_pointwise({"one": 1, "two": 2, "three": 3})
    pairs = sample_pairs(pw, delta=5, pairs_per_query=10, seed=0)
    assert "one" not in set(pairs.query_id)                     # n=1 -> none
    two = pairs[pairs.query_id == "two"]
    assert len(two) == 1 and (two.rank_a.iloc[0], two.rank_b.iloc[0]) == (1, 2)
    assert two.doc_a.iloc[0] == pw[(pw.query_id == "two") & (pw.teacher_rank == 1)].doc_id.iloc[0]
    three = pairs[pairs.query_id == "three"]                    # n < m: all 3 candidates
    assert list(zip(three.rank_a, three.rank_b)) == [(1, 2), (1, 3), (2, 3)]


def test_empty_input():
    pw = pd.DataFrame(columns=["query_id", "doc_id", "retriever_rank", "retriever_score",
                               "teacher_score", "teacher_rank"])
    pairs = sample_pairs(pw, delta=3, pairs_per_query=2, seed=0)
    assert len(pairs) == 0
    to_table(pairs, "pairs")


def test_deterministic_and_row_order_invariant():
    pw = make_pointwise(SIZES)
    a = sample_pairs(pw, delta=5, pairs_per_query=7, seed=11)
    b = sample_pairs(pw, delta=5, pairs_per_query=7, seed=11)
    shuffled = pw.sample(frac=1.0, random_state=123).reset_index(drop=True)
    c = sample_pairs(shuffled, delta=5, pairs_per_query=7, seed=11)
    pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(a, c)


def test_query_sample_independent_of_other_queries():
    pw = make_pointwise(SIZES)
    full = sample_pairs(pw, delta=5, pairs_per_query=7, seed=5)
    # shard by query: each shard alone gives the same rows as the full run
    shards = [["q1", "q3"], ["q2", "q4", "q5"], ["q10"]]
    parts = [sample_pairs(pw[pw.query_id.isin(s)], delta=5, pairs_per_query=7, seed=5)
             for s in shards]
    joined = pd.concat(parts).sort_values(["query_id", "rank_a", "rank_b"], ignore_index=True)
    pd.testing.assert_frame_equal(full, joined)
    # adding an unrelated query does not change q1's sample
    extra = pd.concat([pw, make_pointwise({"zzz": 40}, seed=9)], ignore_index=True)
    more = sample_pairs(extra, delta=5, pairs_per_query=7, seed=5)
    pd.testing.assert_frame_equal(full[full.query_id == "q1"].reset_index(drop=True),
                                  more[more.query_id == "q1"].reset_index(drop=True))


def test_different_seed_changes_sample():
    pw = make_pointwise({"q": 50})
    a = sample_pairs(pw, delta=10, pairs_per_query=20, seed=0)
    b = sample_pairs(pw, delta=10, pairs_per_query=20, seed=1)
    assert len(a) == len(b) == 20
    assert list(zip(a.rank_a, a.rank_b)) != list(zip(b.rank_a, b.rank_b))


def test_query_seed_is_stable():
    assert query_seed(0, "q1") == query_seed(0, "q1")
    assert query_seed(0, "q1") != query_seed(1, "q1")
    assert query_seed(0, "q1") != query_seed(0, "q2")
    # pinned value: a change of the hashing scheme would silently change every sample
    assert query_seed(0, "q1") == int.from_bytes(
        __import__("hashlib").sha256(b"0:q1").digest()[:8], "little")


def test_sampling_is_roughly_uniform_over_candidates():
    # over many queries, every candidate gap is hit about in proportion to its count
    n, delta, m = 10, 4, 3
    pw = make_pointwise({f"q{k}": n for k in range(3000)})
    pairs = sample_pairs(pw, delta=delta, pairs_per_query=m, seed=0)
    gaps = (pairs.rank_b - pairs.rank_a).value_counts(normalize=True).sort_index()
    expected = pd.Series({g: (n - g) / expected_count(n, delta) for g in range(1, delta)})
    assert np.allclose(gaps.to_numpy(), expected.to_numpy(), atol=0.02)


def test_pair_counts():
    pw = make_pointwise(SIZES)
    pairs = sample_pairs(pw, delta=3, pairs_per_query=4, seed=0)
    counts = pair_counts(pairs)
    assert "q5" not in set(counts.query_id)
    full = pair_counts(pairs, pointwise=pw)
    assert list(full.columns) == ["query_id", "n_candidates", "n_sampled"]
    assert sorted(full.query_id) == list(full.query_id) == sorted(SIZES)
    for q, n in SIZES.items():
        row = full[full.query_id == q].iloc[0]
        assert row.n_candidates == expected_count(n, 3)
        assert row.n_sampled == min(4, expected_count(n, 3)) == (pairs.query_id == q).sum()


# --- validation --------------------------------------------------------------------------------

@pytest.mark.parametrize("delta,m,match", [(1, 5, "delta"), (0, 5, "delta"), (-3, 5, "delta"),
                                           (3, 0, "pairs_per_query"), (3, -1, "pairs_per_query")])
def test_bad_arguments(delta, m, match):
    with pytest.raises(ValueError, match=match):
        sample_pairs(make_pointwise({"q": 5}), delta=delta, pairs_per_query=m, seed=0)


def test_duplicated_doc_rejected():
    pw = make_pointwise({"q": 5, "r": 3})
    dup = pd.concat([pw, pw.iloc[[1]].assign(teacher_rank=99)], ignore_index=True)
    with pytest.raises(ValueError, match="duplicated \\(query_id, doc_id\\)"):
        sample_pairs(dup, delta=3, pairs_per_query=2, seed=0)


def test_duplicated_teacher_rank_rejected():
    pw = make_pointwise({"q": 5, "r": 3})
    bad = pw.copy()
    qrows = bad.index[bad.query_id == "q"]
    bad.loc[qrows[0], "teacher_rank"] = bad.loc[qrows[1], "teacher_rank"]
    with pytest.raises(ValueError, match="duplicated teacher_rank"):
        sample_pairs(bad, delta=3, pairs_per_query=2, seed=0)


def test_same_rank_in_different_queries_is_fine():
    pw = make_pointwise({"q": 4, "r": 4})                     # both have ranks 1..4
    assert len(sample_pairs(pw, delta=2, pairs_per_query=10, seed=0)) == 6


# --- rounds --------------------------------------------------------------------------------------

def test_each_round_draws_afresh_deterministically_and_shard_independently():
    pw = make_pointwise({f"q{k}": 30 for k in range(8)})
    r1 = sample_pairs(pw, delta=10, pairs_per_query=20, seed=13, iteration=1)
    r2 = sample_pairs(pw, delta=10, pairs_per_query=20, seed=13, iteration=2)
    # same lists, same seed: another round compares other rank positions for every query
    for q in r1.query_id.unique():
        a = set(zip(r1[r1.query_id == q].rank_a, r1[r1.query_id == q].rank_b))
        b = set(zip(r2[r2.query_id == q].rank_a, r2[r2.query_id == q].rank_b))
        assert len(a) == len(b) == 20 and a != b
    # a round is deterministic, and a query's draw does not depend on the other queries (shards)
    pd.testing.assert_frame_equal(r2, sample_pairs(pw, delta=10, pairs_per_query=20, seed=13, iteration=2))
    parts = [sample_pairs(pw[pw.query_id.isin(s)], delta=10, pairs_per_query=20, seed=13, iteration=2)
             for s in (["q0", "q5"], ["q1", "q2", "q3", "q4", "q6", "q7"])]
    pd.testing.assert_frame_equal(r2, pd.concat(parts).sort_values(["query_id", "rank_a", "rank_b"],
                                                                   ignore_index=True))
    # without a round: the round-less seed of (seed, query_id), as before
    assert query_seed(13, "q1", None) == query_seed(13, "q1")
    assert query_seed(13, "q1", 1) != query_seed(13, "q1", 2) != query_seed(13, "q1")
    assert query_seed(0, "q1", 2) == int.from_bytes(__import__("hashlib").sha256(b"0:2:q1").digest()[:8], "little")


def test_the_sample_pairs_rule_passes_the_round(tmp_path):
    from pathlib import Path

    rule = (Path(__file__).resolve().parents[1] / "rules" / "distill.smk").read_text()
    assert "--iteration {wildcards.it}" in rule.split("rule sample_pairs:")[1].split("rule ")[0]


def test_sample_pairs_stage_seeds_by_the_round_from_the_command_line(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from pairdistill import io

    pw = make_pointwise({"q1": 30, "q2": 12})
    pw["retriever_rank"] = pw["retriever_rank"].astype("Int32")
    pw["retriever_score"] = pw["retriever_score"].astype("Float32")
    pw["teacher_score"] = pw["teacher_score"].astype("float32")
    pw["cached"] = False
    io.write_table(pw, "pointwise", tmp_path / "pointwise.parquet")
    src = Path(__file__).resolve().parents[1] / "src"
    subprocess.run([sys.executable, "-m", "pairdistill", "sample-pairs", "--pointwise", str(tmp_path / "pointwise.parquet"),
                    "--out", str(tmp_path / "pairs.parquet"), "--delta", "10", "--pairs-per-query", "5",
                    "--seed", "13", "--iteration", "2"], check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(src)})
    got = io.read_table(tmp_path / "pairs.parquet", "pairs")
    pd.testing.assert_frame_equal(got, sample_pairs(pw, delta=10, pairs_per_query=5, seed=13, iteration=2),
                                  check_dtype=False)
