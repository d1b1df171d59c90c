"""Metrics, reranking, sym-sum aggregation and the summary table, on hand-made runs."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from pairdistill import evaluate, io


def _run(rows):
    return pd.DataFrame(rows, columns=["query_id", "doc_id", "rank", "score"]).astype(
        {"rank": "int32", "score": "float32"})


QRELS = pd.DataFrame({"query_id": ["q1", "q1", "q2"], "doc_id": ["a", "c", "x"], "relevance": [1, 2, 1]})


def test_metrics_by_hand():
    run = _run([("q1", "a", 1, 3.0), ("q1", "b", 2, 2.0), ("q1", "c", 3, 1.0),
                ("q2", "y", 1, 5.0), ("q2", "x", 2, 4.0)])
    table = evaluate.metrics(run, QRELS, ["nDCG@10", "RR@10", "R@2"], system="s", iteration=0,
                             eval_set="toy/test")
    got = dict(zip(table["measure"], table["value"]))
    # q1: gains 1 (rank 1) and 3 (=2^2-1, rank 3); ideal: 3 then 1 -- trec_eval uses gain = rel
    dcg1 = 1 / math.log2(2) + 2 / math.log2(4)
    idcg1 = 2 / math.log2(2) + 1 / math.log2(3)
    ndcg2 = (1 / math.log2(3)) / 1.0
    assert got["nDCG@10"] == pytest.approx((dcg1 / idcg1 + ndcg2) / 2, rel=1e-6)
    assert got["RR@10"] == pytest.approx((1.0 + 0.5) / 2)
    assert got["R@2"] == pytest.approx((0.5 + 1.0) / 2)
    io.to_table(table, "metrics")  # carries the metrics schema


def test_query_missing_from_run_counts_as_zero():
    run = _run([("q1", "a", 1, 1.0)])
    table = evaluate.metrics(run, QRELS, ["RR@10"], system="s", iteration=None, eval_set="toy/test")
    assert table["value"].iloc[0] == pytest.approx(0.5)
    assert pd.isna(table["iteration"].iloc[0])


def test_rerank_top_reorders_only_the_head():
    run = _run([("q1", "a", 1, 9.0), ("q1", "b", 2, 8.0), ("q1", "c", 3, 7.0), ("q1", "d", 4, 6.0)])
    new = pd.Series([0.1, 0.9, 0.5], index=[0, 1, 2])
    out = evaluate.rerank_top(run, new, depth=3)
    assert out["doc_id"].tolist() == ["b", "c", "a", "d"]
    assert out["rank"].tolist() == [1, 2, 3, 4]
    assert (np.diff(out["score"]) < 0).all()


def test_sym_sum_by_hand():
    pairs = pd.DataFrame({"query_id": ["q"] * 6, "doc_a": ["a", "b", "a", "c", "b", "c"],
                          "doc_b": ["b", "a", "c", "a", "c", "b"], "p_ab": [0.9, 0.2, 0.6, 0.3, 0.4, 0.7]})
    agg = evaluate.sym_sum(pairs).set_index("doc_id")["score"]
    # s(a) = P(a>b) + P(a>c) + (1 - P(b>a)) + (1 - P(c>a))
    assert agg["a"] == pytest.approx(0.9 + 0.6 + 0.8 + 0.7)
    assert agg["b"] == pytest.approx(0.2 + 0.4 + 0.1 + 0.3)
    assert agg["c"] == pytest.approx(0.3 + 0.7 + 0.4 + 0.6)


def test_summary_rows_and_columns():
    def frame(system, iteration, eval_set, measures, values):
        return pd.DataFrame({"system": system, "iteration": pd.array([iteration] * len(measures), dtype="Int32"),
                             "eval_set": eval_set, "measure": measures, "value": values})

    frames = [
        frame("pointwise teacher", None, "msmarco/dev", ["RR@10", "R@1000"], [0.7, 0.9]),
        frame("iteration 1", 1, "msmarco/dev", ["RR@10", "R@1000"], [0.5, 0.8]),
        frame("iteration 0", 0, "msmarco/dev", ["RR@10", "R@1000"], [0.3, 0.7]),
        frame("iteration 1", 1, "msmarco/dl19", ["nDCG@10"], [0.6]),
        frame("iteration 0", 0, "msmarco/dl19", ["nDCG@10"], [0.4]),
    ]
    table = evaluate.summary(frames)
    assert list(table.columns) == ["system", "iteration", "eval_set", "RR@10", "R@1000", "nDCG@10"]
    # evaluation sets in order of appearance; within one, iterations in order, then the teachers
    assert table[["system", "eval_set"]].values.tolist() == [
        ["iteration 0", "msmarco/dev"], ["iteration 1", "msmarco/dev"], ["pointwise teacher", "msmarco/dev"],
        ["iteration 0", "msmarco/dl19"], ["iteration 1", "msmarco/dl19"]]
    assert table["RR@10"].tolist()[:3] == [0.3, 0.5, 0.7]
    assert table["nDCG@10"].tolist()[3:] == [0.4, 0.6]
    assert table["nDCG@10"].iloc[:3].isna().all()  # not measured on dev
