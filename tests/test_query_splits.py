"""Derived query splits (config query_splits, pairdistill.query_splits): the seeded partition, the
prepared artifacts that carry it, and every bad setting as one line naming its key."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from pairdistill import data, io, query_splits
from pairdistill.loaders import beir
from pairdistill.errors import SettingError

HALVES = {"adapt": {"from": "test", "share": 0.5}, "heldout": {"from": "test", "rest_of": ["adapt"]}}


def _collection(root, n_test=25, n_train=6):
    """A BEIR collection: 40 documents, n_test test queries judging 1-3 documents each, n_train train queries."""
    ds = root / "toy"
    (ds / "qrels").mkdir(parents=True)
    (ds / "corpus.jsonl").write_text("".join(json.dumps({"_id": f"d{i}", "title": "", "text": f"passage {i}"}) + "\n"
                                             for i in range(40)))
    ids = [f"t{i}" for i in range(n_test)] + [f"r{i}" for i in range(n_train)]
    (ds / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": f"query {q}"}) + "\n" for q in ids))
    rows = ["query-id\tcorpus-id\tscore"]
    for i in range(n_test):
        rows += [f"t{i}\td{(i + k) % 40}\t{1 + k}" for k in range(1 + i % 3)]
    (ds / "qrels" / "test.tsv").write_text("\n".join(rows) + "\n")
    (ds / "qrels" / "train.tsv").write_text("".join(f"r{i}\td{i}\t1\n" for i in range(n_train)))
    return root


def _prepare(root, out, splits, spec, seed=13):
    stats = data.prepare(root, "toy", splits, out / "corpus.parquet", out / "queries.parquet", out / "qrels.parquet",
                         query_splits=spec, seed=seed)
    return stats, io.read_table(out / "queries.parquet", "queries"), io.read_table(out / "qrels.parquet", "qrels")


def test_partition_is_disjoint_covers_the_split_and_gives_the_shares(tmp_path):
    ids = [f"q{i:03d}" for i in range(225)]
    spec = query_splits.check({"a": {"from": "test", "share": 0.2}, "b": {"from": "test", "share": 0.3},
                               "rest": {"from": "test", "rest_of": ["a", "b"]}})
    parts = query_splits.partition(ids, "test", spec, seed=13)
    assert [len(parts[s]) for s in ("a", "b", "rest")] == [45, 68, 112]  # round(0.2 * 225), round(0.5 * 225) - 45
    assert not set(parts["a"]) & set(parts["b"]) and not (set(parts["a"]) | set(parts["b"])) & set(parts["rest"])
    assert set(parts["a"]) | set(parts["b"]) | set(parts["rest"]) == set(ids)
    assert all(p == sorted(p) for p in parts.values())
    # deterministic: the same seed and ids in any order give the same parts; another seed others
    assert query_splits.partition(list(reversed(ids)), "test", spec, seed=13) == parts
    assert query_splits.partition(ids, "test", spec, seed=14)["a"] != parts["a"]
    # not a prefix of the sorted ids: a shuffle
    assert parts["a"] != sorted(ids)[:45]


def test_a_rest_of_split_without_the_share_split_listed_overlaps_it():
    spec = query_splits.check({"a": {"from": "test", "share": 0.4}, "b": {"from": "test", "share": 0.4},
                               "not_a": {"from": "test", "rest_of": "a"}})
    parts = query_splits.partition([f"q{i}" for i in range(10)], "test", spec, seed=0)
    assert set(parts["not_a"]) == {f"q{i}" for i in range(10)} - set(parts["a"])
    assert set(parts["b"]) <= set(parts["not_a"]) and len(parts["not_a"]) == 6


def test_prepare_writes_derived_splits_whose_qrels_follow_their_queries(tmp_path):
    root = _collection(tmp_path / "data")
    stats, queries, qrels = _prepare(root, tmp_path / "out", ["adapt", "heldout"], HALVES)
    assert sorted(queries["split"].unique()) == ["adapt", "heldout"]  # the source itself is not requested
    adapt = set(queries.loc[queries["split"] == "adapt", "query_id"])
    held = set(queries.loc[queries["split"] == "heldout", "query_id"])
    assert len(adapt) == 13 and len(held) == 12 and not adapt & held  # round(12.5) = 13
    assert adapt | held == {f"t{i}" for i in range(25)}
    # every judgement of test is kept, under the split of its query
    whole = beir.load_qrels(root / "toy" / "qrels" / "test.tsv", "test")
    for split, ids in (("adapt", adapt), ("heldout", held)):
        mine = qrels[qrels["split"] == split]
        assert set(mine["query_id"]) == ids
        expect = whole[whole["query_id"].isin(ids)]
        assert sorted(map(tuple, mine[["query_id", "doc_id", "relevance"]].to_numpy().tolist())) == \
            sorted(map(tuple, expect[["query_id", "doc_id", "relevance"]].to_numpy().tolist()))
    assert len(qrels) == len(whole)
    assert stats["derived"] == {"adapt": {"from": "test", "queries": 13, "qrels": int((qrels["split"] == "adapt").sum()),
                                          "judged_queries": 13},
                                "heldout": {"from": "test", "queries": 12,
                                            "qrels": int((qrels["split"] == "heldout").sum()), "judged_queries": 12}}
    # the texts travel with their queries
    assert dict(queries[["query_id", "text"]].itertuples(index=False))["t3"] == "query t3"
    # the same settings give the same files, row for row
    _, again_q, again_r = _prepare(root, tmp_path / "again", ["heldout", "adapt"], HALVES)
    key = ["split", "query_id"]
    pd.testing.assert_frame_equal(again_q.sort_values(key).reset_index(drop=True),
                                  queries.sort_values(key).reset_index(drop=True))
    assert len(again_r) == len(qrels)


def test_derived_and_plain_splits_side_by_side(tmp_path):
    root = _collection(tmp_path / "data")
    _, queries, qrels = _prepare(root, tmp_path / "out", ["train", "heldout", "test"], HALVES)
    assert list(dict.fromkeys(queries["split"])) == ["train", "heldout", "test"]  # in the order requested
    assert (queries["split"] == "test").sum() == 25 and (queries["split"] == "heldout").sum() == 12
    assert set(qrels.loc[qrels["split"] == "train", "query_id"]) == {f"r{i}" for i in range(6)}


def test_a_share_that_leaves_a_split_empty_is_named(tmp_path):
    root = _collection(tmp_path / "data")
    spec = {"adapt": {"from": "test", "share": 1.0}, "heldout": {"from": "test", "rest_of": ["adapt"]}}
    with pytest.raises(SettingError, match=r"query_splits.heldout: the rest of adapt of the 25 queries of 'test' is no query"):
        _prepare(root, tmp_path / "out", ["adapt", "heldout"], spec)
    assert not (tmp_path / "out").exists()  # nothing written


@pytest.mark.parametrize("spec, message", [
    ({"a": {"from": "test", "share": 0.7}, "b": {"from": "test", "share": 0.4}},
     "query_splits: the shares of 'test' (a, b) add up to 1.1, more than all its queries"),
    ({"a": {"from": "test", "share": 0}}, "query_splits.a.share: 0 is not a share of the queries (0 < share <= 1)"),
    ({"a": {"from": "test", "share": 1.5}}, "query_splits.a.share: 1.5 is not a share of the queries"),
    ({"a": {"from": "test", "share": True}}, "query_splits.a.share: True is not a share"),
    ({"a": {"from": "test"}}, "query_splits.a: give exactly one of share"),
    ({"a": {"from": "test", "share": 0.5, "rest_of": ["b"]}}, "query_splits.a: give exactly one of share"),
    ({"a": {"share": 0.5}}, "query_splits.a.from: the split whose queries it takes is missing"),
    ({"a": {"from": "test", "shares": 0.5}}, "query_splits.a.shares: unknown key"),
    ({"a": {"from": "test", "rest_of": ["b"]}}, "query_splits.a.rest_of: 'b' is not a derived split"),
    ({"a": {"from": "test", "rest_of": "a"}}, "query_splits.a.rest_of: a split cannot be the rest of itself"),
    ({"a": {"from": "test", "share": 0.5}, "b": {"from": "train", "rest_of": ["a"]}},
     "query_splits.b.rest_of: 'a' takes its queries from 'test', not from 'train'"),
    ({"a": {"from": "test", "share": 0.5}, "b": {"from": "test", "rest_of": ["a"]}, "c": {"from": "test", "rest_of": ["b"]}},
     "query_splits.c.rest_of: 'b' is itself a rest_of split"),
    ({"a": {"from": "test", "share": 0.5}, "b": {"from": "a", "share": 0.5}},
     "query_splits.b.from: 'a' is a derived split itself"),
    ({"test": {"from": "train", "share": 0.5}}, "query_splits.test: the collection has a split of that name"),
    ({"a": "test"}, "query_splits.a: expected {from: <split>, share: <0..1>}"),
])
def test_bad_settings_name_their_key(spec, message):
    with pytest.raises(SettingError) as err:
        query_splits.check(spec, collection_splits=["train", "test"])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_no_derived_splits_reads_what_is_requested():
    assert query_splits.check(None) == {} and query_splits.check({}) == {}
    spec = query_splits.check(HALVES)
    assert query_splits.loaded_splits(["adapt", "heldout"], spec) == ["test"]
    assert query_splits.loaded_splits(["train", "heldout"], spec) == ["train", "test"]
    assert query_splits.loaded_splits(["train", "test"], {}) == ["train", "test"]
