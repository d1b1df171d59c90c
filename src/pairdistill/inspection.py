"""``pairdistill inspect``: what the teachers said and what the student did, from the Parquet artifacts.

Reads only files under ``results/`` (see docs/artifacts.md); never a model. Each command
returns a :class:`Report` (a few scalars and some tables) that :func:`render` prints as a table,
TSV or JSON. A missing, damaged or foreign artifact, an unknown query id or an iteration that was
never run raises :class:`InspectError`, which the command line prints as one line (exit code 2).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import io

TEXT_WIDTH = 80


class InspectError(Exception):
    """One line naming the file or the id that is missing or bad."""


@dataclass
class Report:
    info: dict = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# reading artifacts


def iterations(results: str | Path) -> list[int]:
    """The iterations that have a directory under ``results`` (``iter-N``), sorted."""
    found = [int(m.group(1)) for p in Path(results).glob("iter-*") if (m := re.fullmatch(r"iter-(\d+)", p.name))]
    return sorted(found)


def check_iteration(results: str | Path, n: int) -> None:
    have = iterations(results)
    if n not in have:
        where = f"iterations {have[0]}..{have[-1]} exist" if have else "no iteration exists"
        raise InspectError(f"iteration {n} not found in {results} ({where}): run snakemake --config iteration={n} first")


def check_round(results: str | Path, n: int) -> None:
    """A round with teacher scores: iteration 1 or later, and run."""
    if n < 1:
        raise InspectError(f"iteration {n} has no teacher scores: rounds start at iteration 1")
    check_iteration(results, n)


def _missing_hint(path: Path) -> str:
    m = re.search(r"iter-(\d+)", str(path))
    if m:
        return f"run snakemake --config iteration={m.group(1)} first"
    return "run snakemake first"


def read(path: str | Path, name: str, *, rows: tuple[str, list] | None = None,
         columns: list[str] | None = None) -> pd.DataFrame:
    """An artifact of schema ``name`` (optionally only the rows whose column is in a list), or an
    :class:`InspectError` naming the file when it is missing, damaged or of another schema."""
    path = Path(path)
    if not path.is_file():
        raise InspectError(f"{path} not found: {_missing_hint(path)}")
    try:
        if rows is not None:
            return io.read_rows(path, name, rows[0], rows[1], columns=columns)
        return io.read_table(path, name, columns=columns)
    except ValueError as exc:
        if "schema does not match" in str(exc):
            raise InspectError(f"{path}: not a {name!r} artifact (its columns differ)") from None
        raise InspectError(f"{path}: damaged Parquet file ({str(exc).splitlines()[0]})") from None
    except OSError as exc:  # pyarrow's ArrowInvalid and ArrowIOError are ValueError / OSError
        raise InspectError(f"{path}: damaged Parquet file ({str(exc).splitlines()[0]})") from None


def _data(results: Path, name: str) -> Path:
    return results / "data" / f"{name}.parquet"


def _iter(results: Path, n: int, name: str) -> Path:
    return results / f"iter-{n}" / f"{name}.parquet"


def _short(text: str, width: int = TEXT_WIDTH) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _relevance(results: Path, query_ids) -> pd.DataFrame:
    """``query_id, doc_id, relevance`` over all splits (a query id belongs to one split)."""
    q = read(_data(results, "qrels"), "qrels", rows=("query_id", list(query_ids)))
    return q.groupby(["query_id", "doc_id"], as_index=False)["relevance"].max()


def _with_relevance(df: pd.DataFrame, rel: pd.DataFrame, doc: str, out: str) -> pd.DataFrame:
    r = rel.rename(columns={"doc_id": doc, "relevance": out})
    df = df.merge(r, on=["query_id", doc], how="left")
    df[out] = df[out].fillna(0).astype(int)  # unjudged passages count as not relevant
    return df


# ---------------------------------------------------------------------------------------------
# inspect query


def _student_ranks(results: Path, query_id: str, first: int) -> dict[str, pd.Series]:
    """For each retriever j >= ``first``: the rank it gave each passage of the query (doc_id ->
    rank), from round j+1's top-k or, for a query outside the training set, retriever j's eval run."""
    out = {}
    for j in iterations(results):
        if j < first:
            continue
        sources = [_iter(results, j + 1, "train_topk")]
        sources += sorted((results / f"iter-{j}" / "eval").glob("*/run.parquet"))
        for path in sources:
            if not path.is_file():
                continue
            run = read(path, "run", rows=("query_id", [query_id]), columns=["query_id", "doc_id", "rank"])
            if len(run):
                out[f"rank_r{j}"] = run.set_index("doc_id")["rank"]
                break
    return out


def query(results: str | Path, query_id: str, iteration: int = 1) -> Report:
    """The round-``iteration`` top-k of one query under both teachers, and how the students moved it."""
    results = Path(results)
    queries = read(_data(results, "queries"), "queries", rows=("query_id", [query_id]))
    if queries.empty:
        raise InspectError(f"query {query_id!r} not in {_data(results, 'queries')}")
    check_round(results, iteration)
    pw_path = _iter(results, iteration, "pointwise")
    topk = read(pw_path, "pointwise", rows=("query_id", [query_id]))
    if topk.empty:
        raise InspectError(f"query {query_id!r} not in {pw_path} (not a training query of round {iteration})")
    topk = _with_relevance(topk, _relevance(results, [query_id]), "doc_id", "relevance")
    topk = topk.sort_values(["retriever_rank", "teacher_rank"], na_position="last")
    table = topk[["doc_id", "retriever_rank", "retriever_score", "teacher_score", "teacher_rank", "relevance"]].copy()
    table = table.rename(columns={"retriever_rank": f"rank_r{iteration - 1}"})
    for name, ranks in _student_ranks(results, query_id, iteration).items():
        table[name] = table["doc_id"].map(ranks).astype("Int32")
    pairs = read(_iter(results, iteration, "pairwise"), "pairwise", rows=("query_id", [query_id]))
    pairs = pairs.sort_values(["rank_a", "rank_b"])[["doc_a", "doc_b", "rank_a", "rank_b", "p_ab", "p_ba", "prob"]]
    info = {"query_id": query_id, "split": ", ".join(sorted(queries["split"].unique())),
            "text": queries["text"].iloc[0], "iteration": iteration,
            "note": f"rank_rJ: retriever J's rank (rank_r{iteration - 1} made this top-k); teacher ranks are pointwise"}
    return Report(info, {"top-k": table.reset_index(drop=True), "pairs": pairs.reset_index(drop=True)})


# ---------------------------------------------------------------------------------------------
# inspect disagreements


def disagreement_by_gap(pairs: pd.DataFrame) -> pd.DataFrame:
    """Pairs where the pairwise teacher reverses the pointwise order (``prob`` < 0.5 while doc_a
    is ranked above doc_b by the pointwise teacher), counted by rank gap ``|rank_a - rank_b|``."""
    df = pd.DataFrame({"gap": (pairs["rank_a"] - pairs["rank_b"]).abs().astype(int),
                       "reversed": (pairs["prob"] < 0.5) == (pairs["rank_a"] < pairs["rank_b"])})
    by = df.groupby("gap")["reversed"].agg(pairs="size", reversals="sum").reset_index()
    by["rate"] = by["reversals"] / by["pairs"]
    return by


def disagreements(results: str | Path, iteration: int = 1, top: int = 20) -> Report:
    results = Path(results)
    check_round(results, iteration)
    pairs = read(_iter(results, iteration, "pairwise"), "pairwise")
    if pairs.empty:
        raise InspectError(f"{_iter(results, iteration, 'pairwise')}: no pairs")
    by_gap = disagreement_by_gap(pairs)
    reversed_ = pairs[pairs["prob"] < 0.5].nsmallest(top, "prob")
    qids = reversed_["query_id"].unique().tolist()
    docs = pd.unique(pd.concat([reversed_["doc_a"], reversed_["doc_b"]])).tolist()
    qtext = read(_data(results, "queries"), "queries", rows=("query_id", qids)).drop_duplicates("query_id")
    qtext = qtext.set_index("query_id")["text"]
    corpus = read(_data(results, "corpus"), "corpus", rows=("doc_id", docs)).set_index("doc_id")
    dtext = (corpus["title"].fillna("") + " " + corpus["text"].fillna("")).str.strip()
    rel = _relevance(results, qids)
    worst = _with_relevance(_with_relevance(reversed_, rel, "doc_a", "rel_a"), rel, "doc_b", "rel_b")
    worst = worst.assign(query=worst["query_id"].map(qtext).map(lambda t: _short(t, 60)),
                         text_a=worst["doc_a"].map(dtext).map(lambda t: _short(t, 60)),
                         text_b=worst["doc_b"].map(dtext).map(lambda t: _short(t, 60)))
    worst = worst[["query_id", "query", "rank_a", "rank_b", "prob", "rel_a", "rel_b", "doc_a", "text_a",
                   "doc_b", "text_b"]]
    n, r = int(by_gap["pairs"].sum()), int(by_gap["reversals"].sum())
    info = {"iteration": iteration, "pairs": n, "reversals": r, "reversal_rate": round(r / n, 4)}
    return Report(info, {"reversal rate by rank gap": by_gap,
                         f"most confident reversals (lowest P(a>b), top {top})": worst.reset_index(drop=True)})


# ---------------------------------------------------------------------------------------------
# inspect teachers

QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)


def _quantiles(name: str, x: pd.Series) -> dict:
    x = x.dropna().astype(float)
    row = {"score": name, "n": len(x), "mean": x.mean()}
    row.update({f"q{int(q * 100)}": x.quantile(q) for q in QUANTILES})
    return row


def calibration(pairs: pd.DataFrame, bins: int = 10) -> pd.DataFrame:
    """On judged pairs (the two passages' labels differ; unjudged counts as 0): for each bin of
    predicted P(a>b), how often a is in fact the more relevant one."""
    judged = pairs[pairs["rel_a"] != pairs["rel_b"]]
    edges = np.linspace(0, 1, bins + 1)
    b = pd.cut(judged["prob"], edges, include_lowest=True)
    g = judged.assign(a_wins=judged["rel_a"] > judged["rel_b"]).groupby(b, observed=True)
    out = g.agg(pairs=("prob", "size"), mean_prob=("prob", "mean"), observed=("a_wins", "mean")).reset_index()
    out["bin"] = out["prob"].astype(str)
    return out[["bin", "pairs", "mean_prob", "observed"]]


def teachers(results: str | Path, iteration: int = 1) -> Report:
    results = Path(results)
    check_round(results, iteration)
    point = read(_iter(results, iteration, "pointwise"), "pointwise")
    pairs = read(_iter(results, iteration, "pairwise"), "pairwise")
    rel = _relevance(results, pairs["query_id"].unique().tolist())
    pairs = _with_relevance(_with_relevance(pairs, rel, "doc_a", "rel_a"), rel, "doc_b", "rel_b")
    dist = pd.DataFrame([_quantiles("pointwise teacher_score", point["teacher_score"]),
                         _quantiles("pairwise P(a>b) p_ab", pairs["p_ab"]),
                         _quantiles("pairwise P(b>a) p_ba", pairs["p_ba"]),
                         _quantiles("pairwise target prob", pairs["prob"])])
    judged = pairs[pairs["rel_a"] != pairs["rel_b"]]
    a_wins = judged["rel_a"] > judged["rel_b"]
    both = pairs.dropna(subset=["p_ba"])
    info = {
        "iteration": iteration,
        "pairs": len(pairs),
        # doc_a is the pointwise teacher's higher-ranked passage, so prob >= 0.5 is agreement
        "teachers_agree": round(float((pairs["prob"] >= 0.5).mean()), 4),
        "judged_pairs": len(judged),
        "pointwise_accuracy_on_judged": round(float(a_wins.mean()), 4) if len(judged) else None,
        "pairwise_accuracy_on_judged": round(float(((judged["prob"] >= 0.5) == a_wins).mean()), 4) if len(judged) else None,
        "pairs_scored_both_orders": len(both),
        # the pairwise teacher contradicts itself when both orders say the same passage wins
        "pairwise_self_consistent": round(float(((both["p_ab"] >= 0.5) != (both["p_ba"] >= 0.5)).mean()), 4)
        if len(both) else None,
    }
    return Report(info, {"score distributions": dist,
                         "calibration of P(a>b) on judged pairs": calibration(judged)})


# ---------------------------------------------------------------------------------------------
# inspect runs


def _run_path(results: Path, system: str, split: str) -> Path:
    if re.fullmatch(r"\d+", system):
        check_iteration(results, int(system))
        return results / f"iter-{system}" / "eval" / split / "run.parquet"
    return Path(system)


def runs(results: str | Path, a: str, b: str, split: str = "test", measure: str = "nDCG@10", top: int = 10) -> Report:
    """Per-query ``measure`` of system B minus system A (iteration numbers or run.parquet paths)."""
    from .evaluate import per_query

    results = Path(results)
    pa_, pb_ = _run_path(results, a, split), _run_path(results, b, split)
    qrels = read(_data(results, "qrels"), "qrels")
    qrels = qrels[qrels["split"] == split]
    if qrels.empty:
        raise InspectError(f"split {split!r} has no qrels in {_data(results, 'qrels')}")
    run_a, run_b = read(pa_, "run"), read(pb_, "run")
    ids, (va,) = per_query(run_a, qrels, [measure])
    _, (vb,) = per_query(run_b, qrels, [measure])
    qtext = read(_data(results, "queries"), "queries", rows=("query_id", ids)).drop_duplicates("query_id")
    df = pd.DataFrame({"query_id": ids, "A": va, "B": vb})
    df["diff"] = df["B"] - df["A"]
    df["query"] = df["query_id"].map(qtext.set_index("query_id")["text"]).map(lambda t: _short(t, 70))
    info = {"A": str(pa_), "B": str(pb_), "measure": measure, "split": split, "queries": len(df),
            "mean_A": round(float(df["A"].mean()), 4), "mean_B": round(float(df["B"].mean()), 4),
            "mean_diff": round(float(df["diff"].mean()), 4),
            "gained": int((df["diff"] > 0).sum()), "lost": int((df["diff"] < 0).sum()),
            "tied": int((df["diff"] == 0).sum())}
    gained = df[df["diff"] > 0].sort_values(["diff", "query_id"], ascending=[False, True]).head(top)
    lost = df[df["diff"] < 0].sort_values(["diff", "query_id"]).head(top)
    return Report(info, {f"gained most (top {top})": gained.reset_index(drop=True),
                         f"lost most (top {top})": lost.reset_index(drop=True)})


# ---------------------------------------------------------------------------------------------
# output


def render(report: Report, fmt: str = "table") -> str:
    if fmt == "json":
        return json.dumps({"info": report.info,
                           "tables": {k: json.loads(v.to_json(orient="records")) for k, v in report.tables.items()}},
                          indent=1, ensure_ascii=False)
    lines = []
    if fmt == "tsv":
        for k, v in report.info.items():
            lines.append(f"# {k}\t{v}")
        for title, df in report.tables.items():
            lines.append(f"# table\t{title}")
            lines.append(df.to_csv(sep="\t", index=False, float_format="%.6g").rstrip("\n"))
        return "\n".join(lines)
    from tabulate import tabulate

    for k, v in report.info.items():
        lines.append(f"{k}: {v}")
    for title, df in report.tables.items():
        lines += ["", f"## {title}"]
        if df.empty:
            lines.append("(none)")
        else:
            lines.append(tabulate(df.astype(object).where(df.notna(), None), headers="keys",
                                  showindex=False, floatfmt=".4f", missingval="-"))
    return "\n".join(lines)


def add_arguments(p) -> None:
    """The ``inspect`` subcommand's own arguments (argparse): one subcommand per question."""
    import argparse

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--results", default="results", help="the run's results directory")
    common.add_argument("--format", choices=("table", "tsv", "json"), default="table")
    what = p.add_subparsers(dest="what", required=True)
    q = what.add_parser("query", parents=[common], help="one query's top-k, both teachers, the students' ranks")
    q.add_argument("query_id")
    q.add_argument("--iteration", type=int, default=1, help="the round whose top-k and teacher scores to show")
    q = what.add_parser("disagreements", parents=[common],
                        help="pairs where the pairwise teacher reverses the pointwise order")
    q.add_argument("--iteration", type=int, default=1)
    q.add_argument("--top", type=int, default=20, help="most confident reversals shown")
    q = what.add_parser("teachers", parents=[common],
                        help="score distributions, calibration of P(a>b) on judged pairs, agreement")
    q.add_argument("--iteration", type=int, default=1)
    q = what.add_parser("runs", parents=[common], help="per-query metric differences between two systems")
    q.add_argument("a", help="an iteration number or a run.parquet path")
    q.add_argument("b", help="an iteration number or a run.parquet path")
    q.add_argument("--split", default="test")
    q.add_argument("--measure", default="nDCG@10")
    q.add_argument("--top", type=int, default=10, help="queries shown that gained and lost most")


def main(a) -> int:
    """What the teachers said and the students did (reads results/ only).

    The ``inspect`` subcommand of :mod:`pairdistill.cli` (its arguments: :func:`add_arguments`);
    returns the exit code."""
    import sys

    try:
        if a.what == "query":
            report = query(a.results, a.query_id, a.iteration)
        elif a.what == "disagreements":
            report = disagreements(a.results, a.iteration, a.top)
        elif a.what == "teachers":
            report = teachers(a.results, a.iteration)
        elif a.what == "runs":
            report = runs(a.results, a.a, a.b, split=a.split, measure=a.measure, top=a.top)
        else:
            raise AssertionError(a.what)
    except InspectError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    try:
        print(render(report, a.format), flush=True)
    except BrokenPipeError:  # `| head`: the reader has what it wanted
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
