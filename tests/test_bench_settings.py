"""The settings benchmarks (bench student, bench partitions) choose on held-out training queries:
the queries they score are judged training queries that no round of the run trained on."""

from __future__ import annotations

import pandas as pd
import pytest

from pairdistill import io
from pairdistill.bench.student import _parse_set, heldout_queries


def _results(tmp_path, trained: dict[int, list[str]]):
    r = tmp_path / "results"
    ids = [f"q{i}" for i in range(10)]
    io.write_table(pd.DataFrame({"split": ["train"] * 10 + ["test"] * 2, "query_id": ids + ["t0", "t1"],
                                 "text": [f"query {q}" for q in ids + ["t0", "t1"]]}), "queries",
                   r / "data/queries.parquet")
    judged = ids[:8]  # q8, q9 have no qrels
    io.write_table(pd.DataFrame({"split": ["train"] * 8 + ["test"] * 2, "query_id": judged + ["t0", "t1"],
                                 "doc_id": "d1", "relevance": 1}), "qrels", r / "data/qrels.parquet")
    for n, qs in trained.items():
        io.write_table(pd.DataFrame({"query_id": qs, "doc_id": "d1", "retriever_rank": 1, "retriever_score": 1.0,
                                     "teacher_score": 1.0, "teacher_rank": 1, "cached": False}),
                       "pointwise", r / f"iter-{n}/pointwise.parquet")
    return r


def test_heldout_queries_are_judged_training_queries_no_round_trained_on(tmp_path):
    r = _results(tmp_path, {1: ["q0", "q1"], 2: ["q2", "q1"]})
    queries, qrels = heldout_queries(r, "train", 100, seed=13)
    assert sorted(queries) == ["q3", "q4", "q5", "q6", "q7"]
    assert set(qrels["query_id"]) == set(queries) and set(qrels["split"]) == {"train"}
    some, _ = heldout_queries(r, "train", 3, seed=13)
    assert len(some) == 3 and set(some) <= set(queries)
    assert heldout_queries(r, "train", 3, seed=13)[0] == some  # seeded


def test_nothing_held_out_is_an_error(tmp_path):
    r = _results(tmp_path, {1: [f"q{i}" for i in range(8)]})
    with pytest.raises(ValueError, match="nothing is held out"):
        heldout_queries(r, "train", 10, seed=0)


def test_settings_parse_as_yaml_values():
    assert _parse_set("lr=1e-4,epochs=2,use_labels=false") == {"lr": 1e-4, "epochs": 2, "use_labels": False}
    with pytest.raises(SystemExit, match="not key=value"):
        _parse_set("lr")


def test_pair_feature_cross_validation_reduces_to_the_margin_when_shrunk():
    import numpy as np

    from pairdistill.bench.pair_features import cross_validated

    rng = np.random.default_rng(0)
    za, zb = rng.normal(size=(200, 3)), rng.normal(size=(200, 3))
    group, weights = np.arange(200) // 4, np.array([1.0, 0.5, 0.25])
    margin = (za - zb) @ weights > 0
    # every other term shrunk to ~0: the fitted teacher orders every pair as the margin does
    assert (cross_validated(za, zb, group, weights, "cross", 1e6, 5, 0) == margin).all()
    # a signal the margin misses (the relevant passage is the one with the higher third feature
    # whenever the pair's first feature is high): the cross terms find it on held-out folds
    level = (za[:, 0] + zb[:, 0]) / 2
    truth = np.where(level > 0, za[:, 2] > zb[:, 2], margin)
    za2, zb2 = np.where(truth[:, None], za, zb), np.where(truth[:, None], zb, za)  # a: the relevant one
    acc_margin = ((za2 - zb2) @ weights > 0).mean()
    acc_cross = cross_validated(za2, zb2, group, weights, "cross", 1e-3, 5, 0).mean()
    assert acc_cross > acc_margin + 0.05
