"""The pair-accuracy stage (the paper's Table 5): which pairs it judges, and who is right on them."""

from __future__ import annotations

import warnings

import pandas as pd
import pytest

from pairdistill import io, stages


def _write(tmp_path, qrels_rows, student_rows, pointwise_rows):
    """Artifacts of a 2-query, 5-passage collection; runs as (query, doc, score) in rank order."""
    paths = {k: tmp_path / f"{k}.parquet" for k in ("corpus", "queries", "qrels", "student", "pointwise")}
    io.write_table(pd.DataFrame({"doc_id": [f"d{i}" for i in range(5)], "title": "",
                                 "text": [f"passage number {i}" for i in range(5)]}), "corpus", paths["corpus"])
    io.write_table(pd.DataFrame({"split": "test", "query_id": ["q1", "q2"], "text": ["first query", "second query"]}),
                   "queries", paths["queries"])
    io.write_table(pd.DataFrame(qrels_rows, columns=["query_id", "doc_id", "relevance"]).assign(split="test"),
                   "qrels", paths["qrels"])
    for name, rows in (("student", student_rows), ("pointwise", pointwise_rows)):
        run = pd.DataFrame(rows, columns=["query_id", "doc_id", "score"])
        run["rank"] = run.groupby("query_id").cumcount() + 1
        io.write_table(run, "run", paths[name])
    return paths


def _run(paths, tmp_path, model, delta=2):
    return stages.pair_accuracy(
        str(paths["student"]), str(paths["pointwise"]), str(paths["qrels"]), str(paths["queries"]),
        str(paths["corpus"]), str(tmp_path / "pairs.parquet"), str(tmp_path / "metrics.parquet"),
        split="test", depth=4, delta=delta, model=model, family="bert-pairwise",
        max_length=32, batch_size=4, eval_set="toy/test", pointwise_system="pointwise teacher",
        pairwise_system="pairwise teacher")


def test_the_judged_pairs_and_who_is_right_on_them(tmp_path, tiny_cross_encoder_dir):
    # q1: the pointwise teacher ranks d1 d0 d2 d3; d0 is relevant. Within 2 ranks: (d0, d1) at ranks
    # 2/1 and (d0, d2) at 2/3. The student scores d0 below d1 and above d2.
    # q2: relevant d4 at rank 1, d3 at 2: one pair, which the student ties.
    paths = _write(tmp_path, [("q1", "d0", 1), ("q1", "d3", 0), ("q2", "d4", 2)],
                   [("q1", "d1", 9.0), ("q1", "d0", 5.0), ("q1", "d2", 1.0), ("q2", "d4", 3.0), ("q2", "d3", 3.0)],
                   [("q1", "d1", 0.9), ("q1", "d0", 0.8), ("q1", "d2", 0.7), ("q1", "d3", 0.6),
                    ("q2", "d4", 0.9), ("q2", "d3", 0.1)])
    table = _run(paths, tmp_path, tiny_cross_encoder_dir)
    pairs = pd.read_parquet(tmp_path / "pairs.parquet").sort_values(["query_id", "doc_non"]).reset_index(drop=True)
    assert list(zip(pairs["query_id"], pairs["doc_rel"], pairs["doc_non"])) == [
        ("q1", "d0", "d1"), ("q1", "d0", "d2"), ("q2", "d4", "d3")]
    assert pairs["student_right"].tolist() == [0.0, 1.0, 0.5]
    assert pairs["pointwise_right"].tolist() == [0.0, 1.0, 1.0]
    assert pairs["p_pairwise"].between(0, 1).all()
    assert (pairs["pairwise_right"] == (pairs["p_pairwise"] > 0.5).astype(float)).all()
    value = dict(zip(table["system"], table["value"]))
    assert value["iteration 0"] == pytest.approx(0.5) and value["pointwise teacher"] == pytest.approx(2 / 3)
    assert value["pairwise teacher"] == pytest.approx(pairs["pairwise_right"].mean())
    assert io.read_table(tmp_path / "metrics.parquet", "metrics")["measure"].eq("PairAcc").all()


def test_no_judged_pairs_gives_no_rows_and_a_warning(tmp_path, tiny_cross_encoder_dir):
    # d0, q1's only relevant passage, is 5th in the pointwise teacher's list: below the top-4 judged
    paths = _write(tmp_path, [("q1", "d0", 1)],
                   [("q1", "d1", 3.0), ("q1", "d2", 2.0), ("q1", "d0", 1.0)],
                   [("q1", "d1", 0.9), ("q1", "d2", 0.8), ("q1", "d3", 0.7), ("q1", "d4", 0.6), ("q1", "d0", 0.5)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = _run(paths, tmp_path, tiny_cross_encoder_dir)
    assert table.empty
    assert io.read_table(tmp_path / "metrics.parquet", "metrics").empty
    assert pd.read_parquet(tmp_path / "pairs.parquet").empty
    assert any("no judged pairs in split 'test'" in str(w.message) for w in caught)
