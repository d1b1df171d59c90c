"""``pairdistill inspect``: values on hand-made artifacts (written by the project's own writers),
the three output formats, and each bad input (one line, exit code 2)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from pairdistill import cli, inspection
from pairdistill.io import write_table


def _run(rows):
    return pd.DataFrame(rows, columns=["query_id", "doc_id", "rank", "score"])


@pytest.fixture
def results(tmp_path):
    r = tmp_path / "results"
    write_table(pd.DataFrame({"doc_id": [f"d{i}" for i in range(1, 6)], "title": "T",
                              "text": [f"passage {i}" for i in range(1, 6)]}), "corpus", r / "data/corpus.parquet")
    write_table(pd.DataFrame({"split": ["train", "test", "test"], "query_id": ["q1", "t1", "t2"],
                              "text": ["first query", "test one", "test two"]}), "queries", r / "data/queries.parquet")
    write_table(pd.DataFrame({"split": ["train", "train", "test", "test"], "query_id": ["q1", "q1", "t1", "t2"],
                              "doc_id": ["d3", "d4", "d1", "d2"], "relevance": [1, 1, 1, 1]})
                .astype({"relevance": "int32"}), "qrels", r / "data/qrels.parquet")
    # round 1: retriever 0 ranks d1..d4; the pointwise teacher prefers d3, d1, d2, d4
    write_table(_run([("q1", "d1", 1, 4.0), ("q1", "d2", 2, 3.0), ("q1", "d3", 3, 2.0), ("q1", "d4", 4, 1.0)]),
                "run", r / "iter-1/train_topk.parquet")
    write_table(pd.DataFrame({"query_id": "q1", "doc_id": ["d1", "d2", "d3", "d4"],
                              "retriever_rank": [1, 2, 3, 4], "retriever_score": [4.0, 3.0, 2.0, 1.0],
                              "teacher_score": [5.0, 4.0, 6.0, 1.0], "teacher_rank": [2, 3, 1, 4], "cached": False})
                .astype({"retriever_rank": "Int32"}), "pointwise", r / "iter-1/pointwise.parquet")
    # pairs on teacher ranks: (d3,d1) gap 1 agrees; (d1,d4) gap 3 reversed with 0.2; (d2,d4) gap 1 reversed 0.4
    pairs = pd.DataFrame({"query_id": "q1", "doc_a": ["d3", "d1", "d2"], "doc_b": ["d1", "d4", "d4"],
                          "rank_a": [1, 2, 3], "rank_b": [2, 4, 4], "p_ab": [0.9, 0.2, 0.4],
                          "p_ba": [0.1, None, 0.6], "prob": [0.9, 0.2, 0.4], "cached": False})
    write_table(pairs, "pairwise", r / "iter-1/pairwise.parquet")
    # retriever 1 (round 2's top-k): d3 moves to 1, d4 to 2, d1 drops out
    write_table(_run([("q1", "d3", 1, 9.0), ("q1", "d4", 2, 8.0), ("q1", "d2", 3, 7.0)]),
                "run", r / "iter-2/train_topk.parquet")
    # evaluation runs of retrievers 0 and 1 on the test split: t1 gains, t2 loses
    write_table(_run([("t1", "d5", 1, 2.0), ("t1", "d1", 2, 1.0), ("t2", "d2", 1, 2.0)]),
                "run", r / "iter-0/eval/test/run.parquet")
    write_table(_run([("t1", "d1", 1, 2.0), ("t2", "d5", 1, 2.0), ("t2", "d2", 2, 1.0)]),
                "run", r / "iter-1/eval/test/run.parquet")
    return r


def _cli(capsys, *argv):
    code = cli.main(["inspect", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_query_shows_teachers_labels_pairs_and_movement(results):
    rep = inspection.query(results, "q1", iteration=1)
    assert rep.info["text"] == "first query"
    top = rep.tables["top-k"].set_index("doc_id")
    assert top.loc["d3", "rank_r0"] == 3 and top.loc["d3", "teacher_rank"] == 1
    assert top.loc["d3", "relevance"] == 1 and top.loc["d1", "relevance"] == 0
    # retriever 1's ranks come from round 2's top-k; d1 fell out of it
    assert top.loc["d3", "rank_r1"] == 1 and top.loc["d4", "rank_r1"] == 2 and pd.isna(top.loc["d1", "rank_r1"])
    pairs = rep.tables["pairs"]
    assert list(pairs["doc_a"]) == ["d3", "d1", "d2"] and pd.isna(pairs["p_ba"].iloc[1])


def test_disagreements_counted_at_their_rank_gap(results):
    rep = inspection.disagreements(results, iteration=1, top=5)
    by_gap = rep.tables["reversal rate by rank gap"].set_index("gap")
    assert by_gap.loc[1, "pairs"] == 2 and by_gap.loc[1, "reversals"] == 1 and by_gap.loc[1, "rate"] == 0.5
    assert by_gap.loc[2, "reversals"] == 1 and by_gap.loc[2, "rate"] == 1.0
    assert rep.info["reversals"] == 2 and rep.info["pairs"] == 3
    worst = next(iter(t for k, t in rep.tables.items() if k.startswith("most confident")))
    assert list(worst["doc_a"]) == ["d1", "d2"]  # lowest P(a>b) first
    assert worst["text_b"].iloc[0] == "T passage 4" and worst["rel_b"].iloc[0] == 1


def test_teachers_agreement_and_calibration(results):
    rep = inspection.teachers(results, iteration=1)
    assert rep.info["teachers_agree"] == round(1 / 3, 4)
    # judged pairs (labels differ): (d3 rel, d1 not) and (d1 not, d4 rel); (d2, d4) also differ
    assert rep.info["judged_pairs"] == 3
    assert rep.info["pointwise_accuracy_on_judged"] == round(1 / 3, 4)
    assert rep.info["pairwise_accuracy_on_judged"] == 1.0
    assert rep.info["pairwise_self_consistent"] == 1.0
    cal = rep.tables["calibration of P(a>b) on judged pairs"]
    assert cal["pairs"].sum() == 3 and cal.set_index("bin").loc["(0.8, 0.9]", "observed"] == 1.0


def test_runs_per_query_differences(results):
    rep = inspection.runs(results, "0", "1", split="test")
    assert rep.info["queries"] == 2 and rep.info["gained"] == 1 and rep.info["lost"] == 1
    gained = rep.tables["gained most (top 10)"]
    assert list(gained["query_id"]) == ["t1"] and gained["A"].iloc[0] < gained["B"].iloc[0] == 1.0
    # a run given by its path is the same system
    same = inspection.runs(results, str(results / "iter-0/eval/test/run.parquet"), "1", split="test")
    assert same.info["mean_diff"] == rep.info["mean_diff"]


def test_formats(results, capsys):
    code, out, _ = _cli(capsys, "disagreements", "--results", str(results), "--format", "json")
    assert code == 0
    doc = json.loads(out)
    assert doc["info"]["reversals"] == 2
    assert doc["tables"]["reversal rate by rank gap"][0] == {"gap": 1, "pairs": 2, "reversals": 1, "rate": 0.5}
    code, out, _ = _cli(capsys, "disagreements", "--results", str(results), "--format", "tsv")
    assert code == 0 and "gap\tpairs\treversals\trate\n1\t2\t1\t0.5\n" in out
    code, out, _ = _cli(capsys, "query", "q1", "--results", str(results))
    assert code == 0 and "## top-k" in out and "first query" in out and out.lstrip().startswith("query_id")


def _one_error(capsys, *argv) -> str:
    code, out, err = _cli(capsys, *argv)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


def test_bad_inputs_one_line_exit_2(results, capsys):
    r = str(results)
    assert "'nope'" in _one_error(capsys, "query", "nope", "--results", r)
    assert "iteration=3" in _one_error(capsys, "disagreements", "--iteration", "3", "--results", r)
    assert "'t1'" in _one_error(capsys, "query", "t1", "--results", r)  # a test query has no round
    assert "rounds start at iteration 1" in _one_error(capsys, "teachers", "--iteration", "0", "--results", r)
    (results / "iter-1/pairwise.parquet").unlink()
    line = _one_error(capsys, "teachers", "--results", r)
    assert "iter-1/pairwise.parquet not found: run snakemake --config iteration=1 first" in line
    (results / "iter-1/pointwise.parquet").write_bytes(b"not parquet at all")
    line = _one_error(capsys, "query", "q1", "--results", r)
    assert "iter-1/pointwise.parquet" in line and "damaged" in line
    # a file of another schema is named as such
    line = _one_error(capsys, "runs", str(results / "data/queries.parquet"), "1", "--results", r)
    assert "queries.parquet" in line and "'run'" in line
