"""Metrics through ir-measures, TREC run files, teacher reranking and the summary table."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from . import io


def per_query(run: pd.DataFrame, qrels: pd.DataFrame, measures: Sequence[str]) -> tuple[list[str], list[np.ndarray]]:
    """Each measure's value for every judged query: the sorted judged query ids, and one array per
    measure aligned with them (a query the run misses counts as 0)."""
    import ir_measures

    parsed = [ir_measures.parse_measure(m) for m in measures]
    qrels_in = qrels[["query_id", "doc_id", "relevance"]].copy()
    qrels_in["relevance"] = qrels_in["relevance"].astype(int)
    run_in = run[["query_id", "doc_id", "score"]].astype({"score": float})
    by_query = {m: {} for m in parsed}
    for row in ir_measures.iter_calc(parsed, qrels_in, run_in):
        by_query[row.measure][row.query_id] = row.value
    judged = sorted(qrels_in["query_id"].unique())
    return judged, [np.array([by_query[m].get(q, 0.0) for q in judged], dtype=float) for m in parsed]


def metrics(run: pd.DataFrame, qrels: pd.DataFrame, measures: Sequence[str], *, system: str,
            iteration: int | None, eval_set: str) -> pd.DataFrame:
    """Mean of each measure over the judged queries (a query the run misses counts as 0)."""
    _, values = per_query(run, qrels, measures)
    values = [float(np.mean(v)) for v in values]
    return io.to_table(pd.DataFrame({"system": system, "iteration": iteration, "eval_set": eval_set,
                                     "measure": list(measures),
                                     "value": values}).astype({"iteration": "Int32"}), "metrics").to_pandas()


def write_trec(run: pd.DataFrame, path: str | Path, tag: str) -> None:
    """A TREC run file (``qid Q0 docid rank score tag``), written atomically."""
    with io.atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for q, d, r, s in run[["query_id", "doc_id", "rank", "score"]].itertuples(index=False):
            f.write(f"{q} Q0 {d} {r} {s:.6f} {tag}\n")


def rank_by_score(df: pd.DataFrame, score: str, tiebreak: str = "rank") -> pd.Series:
    """1-based ranks within each query by ``score`` descending (ties by ``tiebreak`` ascending)."""
    order = df.sort_values(["query_id", score, tiebreak], ascending=[True, False, True])
    ranks = order.groupby("query_id", sort=False).cumcount() + 1
    return ranks.reindex(df.index).astype("int32")


def rerank_top(run: pd.DataFrame, new_scores: pd.Series, depth: int) -> pd.DataFrame:
    """Reorder the first ``depth`` of each query's list by ``new_scores`` (aligned with run's index);
    the rest keeps its order below them. Scores of the result are rank-derived, so they stay monotone."""
    run = run.sort_values(["query_id", "rank"]).copy()
    top = run["rank"] <= depth
    head = run[top].copy()
    head["new"] = new_scores.loc[head.index].to_numpy()
    head["rank"] = rank_by_score(head, "new")
    tail = run[~top]
    out = pd.concat([head.drop(columns="new"), tail]).sort_values(["query_id", "rank"])
    out["score"] = (-out["rank"]).astype("float32")
    return out.reset_index(drop=True)[["query_id", "doc_id", "rank", "score"]]


def sym_sum(pairs: pd.DataFrame) -> pd.DataFrame:
    """duoT5's aggregation: s(d) = sum over the other d' of P(d > d') + (1 - P(d' > d)).

    ``pairs`` holds one row per ordered pair (query_id, doc_a, doc_b, p_ab = P(doc_a > doc_b)).
    """
    win = pairs.groupby(["query_id", "doc_a"])["p_ab"].sum()
    lose = (1.0 - pairs["p_ab"]).groupby([pairs["query_id"], pairs["doc_b"]]).sum()
    win.index.names = lose.index.names = ["query_id", "doc_id"]
    return win.add(lose, fill_value=0.0).rename("score").reset_index()


def summary(metric_frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """One row per (system, evaluation set), iterations first in order, one column per measure
    (empty where a measure was not computed for that set)."""
    long = pd.concat(metric_frames, ignore_index=True)
    measures = list(dict.fromkeys(long["measure"]))
    table = long.pivot(index=["system", "eval_set"], columns="measure", values="value")[measures]
    table.columns.name = None
    table.insert(0, "iteration", long.groupby(["system", "eval_set"])["iteration"].first())
    table = table.reset_index()
    sets = list(dict.fromkeys(long["eval_set"]))
    table["_order"] = table["iteration"].astype("Float64").fillna(float(10**6))
    table["_set"] = table["eval_set"].map(sets.index)
    table = table.sort_values(["_set", "_order", "system"]).drop(columns=["_order", "_set"])
    return table[["system", "iteration", "eval_set", *measures]].reset_index(drop=True)
