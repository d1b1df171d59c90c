"""The pipeline's stages: each reads Parquet artifacts, does one step, writes its outputs atomically.

These functions are what the Snakemake rules run (through :mod:`pairdistill.cli`); they take
paths and plain settings, so any stage can also be run by hand or from a notebook.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from . import data, evaluate, io, pairs, runtime


def _log(msg: str) -> None:
    print(msg, flush=True)


def _texts(corpus: pd.DataFrame) -> dict[str, str]:
    return {d: data.passage_text(t, x) for d, t, x in corpus[["doc_id", "title", "text"]].itertuples(index=False)}


def _split_queries(queries_path: str, qrels_path: str, split: str) -> tuple[dict[str, str], pd.DataFrame]:
    queries = io.read_table(queries_path, "queries")
    qrels = io.read_table(qrels_path, "qrels")
    qrels = qrels[qrels["split"] == split]
    if qrels.empty:
        raise ValueError(f"{qrels_path}: no qrels for split {split!r}")
    wanted = set(qrels["query_id"])
    return {q: t for q, t in queries[["query_id", "text"]].itertuples(index=False) if q in wanted}, qrels


def sample_queries(query_ids: Sequence[str], max_queries: int | None, seed: int) -> list[str]:
    """A seeded subset (all when ``max_queries`` is None or large enough), in sorted order."""
    ids = sorted(query_ids)
    if max_queries is None or max_queries >= len(ids):
        return ids
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(ids, size=max_queries, replace=False).tolist())


# --------------------------------------------------------------------------------------------

def prepare(data_dir: str, dataset: str, splits: Sequence[str], out_dir: str) -> dict:
    out = Path(out_dir)
    stats = data.prepare(data_dir, dataset, list(splits), out / "corpus.parquet", out / "queries.parquet",
                         out / "qrels.parquet")
    _log(json.dumps(stats))
    return stats


def init_checkpoint(base: str, out: str, *, dim: int, query_maxlen: int, doc_maxlen: int, seed: int) -> None:
    from . import student

    student.init_checkpoint(base, out, dim=dim, query_maxlen=query_maxlen, doc_maxlen=doc_maxlen, seed=seed)
    _log(f"initial checkpoint from {base} -> {out}")


def index(checkpoint: str, corpus_path: str, out: str, *, nbits: int, doc_maxlen: int, kmeans_niters: int,
          reuse_sample_embeddings: bool, seed: int) -> dict:
    from . import student

    corpus = io.read_table(corpus_path, "corpus")
    texts = list(_texts(corpus).values())  # document ids are unique, so this keeps corpus order
    stats = student.build_index(checkpoint, corpus, texts, out, nbits=nbits, doc_maxlen=doc_maxlen,
                                kmeans_niters=kmeans_niters, reuse_sample_embeddings=reuse_sample_embeddings,
                                seed=seed)
    _log(json.dumps(stats))
    return stats


def retrieve(checkpoint: str, index_dir: str, queries_path: str, qrels_path: str, out: str, *, split: str,
             k: int, max_queries: int | None, seed: int, search: dict) -> pd.DataFrame:
    """Top-``k`` for the (sampled) queries of ``split`` -> the io "run" schema."""
    from . import student

    queries, _ = _split_queries(queries_path, qrels_path, split)
    chosen = sample_queries(list(queries), max_queries, seed)
    run = student.search(checkpoint, index_dir, {q: queries[q] for q in chosen}, k,
                         progress_label="retrieve", **search)
    io.write_table(run, "run", out)
    _log(f"retrieved top-{k} for {run['query_id'].nunique()} of {len(chosen)} queries -> {out}")
    return run


def fit_teacher(kind: str, negatives_path: str, corpus_path: str, queries_path: str, qrels_path: str,
                out: str, loss_out: str, *, split: str, negatives_per_query: int, init: str,
                max_length: int, batch_size: int, epochs: int, lr: float, warmup: float, seed: int) -> dict:
    """Fit the embedded default's pointwise or pairwise teacher on the labelled positives of ``split``
    with hard negatives mined by the starting retriever (its top-k minus the positives)."""
    from . import teachers

    corpus = _texts(io.read_table(corpus_path, "corpus"))
    queries, qrels = _split_queries(queries_path, qrels_path, split)
    positives = qrels[qrels["relevance"] > 0].groupby("query_id")["doc_id"].apply(list).to_dict()
    mined = io.read_table(negatives_path, "run").sort_values(["query_id", "rank"])
    groups = []
    for qid, ranked in mined.groupby("query_id", sort=True):
        pos = positives.get(qid, [])
        pos_set = set(pos)
        negs = [d for d in ranked["doc_id"] if d not in pos_set][:negatives_per_query]
        if not negs:
            continue
        for p in pos:  # one group per labelled positive
            groups.append((queries[qid], corpus[p], [corpus[d] for d in negs]))
    _log(f"fitting the {kind} teacher on {len(groups)} groups ({negatives_per_query} negatives each)")
    fit = teachers.fit_pointwise if kind == "pointwise" else teachers.fit_pairwise
    stats = fit(groups, runtime.resolve_model(init), out, max_length=max_length, batch_size=batch_size,
                epochs=epochs, lr=lr, warmup=warmup, seed=seed, loss_log=loss_out)
    _log(json.dumps(stats, default=float))
    return stats


def pointwise(topk_path: str, corpus_path: str, queries_path: str, qrels_path: str, out: str, *,
              split: str, model: str, family: str, max_length: int, batch_size: int,
              add_positives: bool = True) -> pd.DataFrame:
    """Score every retrieved (query, passage) with the pointwise teacher; with ``add_positives`` the
    labelled positives of the retrieved queries are scored too (retriever columns null for those
    not retrieved), since training puts a positive in every group."""
    from . import teachers

    runtime.resolve_model(model)  # a missing model fails before any data is read
    topk = io.read_table(topk_path, "run")
    corpus = _texts(io.read_table(corpus_path, "corpus"))
    queries, qrels = _split_queries(queries_path, qrels_path, split)
    rows = topk.rename(columns={"rank": "retriever_rank", "score": "retriever_score"})
    if add_positives:
        pos = qrels[(qrels["relevance"] > 0) & qrels["query_id"].isin(set(topk["query_id"]))]
        extra = pos[["query_id", "doc_id"]].merge(rows[["query_id", "doc_id"]], how="left", indicator=True)
        extra = extra[extra["_merge"] == "left_only"].drop(columns="_merge")
        rows = pd.concat([rows, extra], ignore_index=True)
    rows = rows.reset_index(drop=True)
    scorer = teachers.load_pointwise(model, family, max_length=max_length, batch_size=batch_size)
    _log(f"pointwise teacher {scorer.path} ({scorer.family}) on {len(rows)} pairs")
    rows["teacher_score"] = scorer.score([queries[q] for q in rows["query_id"]],
                                         [corpus[d] for d in rows["doc_id"]], progress_label="pointwise")
    rows["_tie"] = rows["retriever_rank"].fillna(np.inf)
    rows["teacher_rank"] = evaluate.rank_by_score(rows.rename(columns={"_tie": "rank"}), "teacher_score")
    rows = rows.drop(columns="_tie").astype({"retriever_rank": "Int32", "retriever_score": "Float32"})
    rows = rows.sort_values(["query_id", "teacher_rank"]).reset_index(drop=True)
    io.write_table(rows, "pointwise", out)
    return rows


def sample_pairs(pointwise_path: str, out: str, *, delta: int, pairs_per_query: int, seed: int) -> pd.DataFrame:
    ranked = io.read_table(pointwise_path, "pointwise")
    sampled = pairs.sample_pairs(ranked, delta=delta, pairs_per_query=pairs_per_query, seed=seed)
    io.write_table(sampled, "pairs", out)
    counts = pairs.pair_counts(sampled, ranked)
    _log(f"sampled {len(sampled)} pairs for {len(counts)} queries (delta {delta}, up to {pairs_per_query} "
         f"per query); {int((counts['n_sampled'] < pairs_per_query).sum())} queries had fewer candidates")
    return sampled


def pairwise(pairs_path: str, corpus_path: str, queries_path: str, out: str, *, model: str, family: str,
             max_length: int, batch_size: int, both_orders: bool) -> pd.DataFrame:
    """P(doc_a > doc_b | q) for every sampled pair; with ``both_orders`` also P(doc_b > doc_a), and
    ``prob`` is their symmetrised mean (p_ab + 1 - p_ba) / 2, which cancels position bias."""
    from . import teachers

    runtime.resolve_model(model)
    sampled = io.read_table(pairs_path, "pairs")
    corpus = _texts(io.read_table(corpus_path, "corpus"))
    queries = dict(io.read_table(queries_path, "queries")[["query_id", "text"]].itertuples(index=False))
    scorer = teachers.load_pairwise(model, family, max_length=max_length, batch_size=batch_size)
    q = [queries[x] for x in sampled["query_id"]]
    a = [corpus[x] for x in sampled["doc_a"]]
    b = [corpus[x] for x in sampled["doc_b"]]
    _log(f"pairwise teacher {scorer.path} ({scorer.family}) on {len(sampled)} pairs"
         f"{' in both orders' if both_orders else ''}")
    if both_orders:
        probs = scorer.prob(q + q, a + b, b + a, progress_label="pairwise")
        p_ab, p_ba = probs[: len(q)], probs[len(q):]
        prob = (p_ab + (1.0 - p_ba)) / 2.0
    else:
        p_ab = scorer.prob(q, a, b, progress_label="pairwise")
        p_ba, prob = None, p_ab
    out_df = sampled[["query_id", "doc_a", "doc_b", "rank_a", "rank_b"]].copy()
    out_df["p_ab"] = p_ab
    out_df["p_ba"] = pd.array(p_ba if p_ba is not None else [None] * len(q), dtype="Float32")
    out_df["prob"] = prob
    io.write_table(out_df, "pairwise", out)
    return out_df


def train(checkpoint_in: str, corpus_path: str, queries_path: str, qrels_path: str, pointwise_path: str,
          pairwise_path: str, checkpoint_out: str, loss_out: str, *, split: str, nway: int, use_labels: bool,
          seed: int, query_maxlen: int, doc_maxlen: int, **hyper) -> dict:
    from . import train as training

    corpus = _texts(io.read_table(corpus_path, "corpus"))
    queries, qrels = _split_queries(queries_path, qrels_path, split)
    positives = qrels[qrels["relevance"] > 0].groupby("query_id")["doc_id"].apply(set).to_dict()
    groups, gstats = training.build_groups(io.read_table(pointwise_path, "pointwise"),
                                           io.read_table(pairwise_path, "pairwise"), positives,
                                           nway=nway, use_labels=use_labels, seed=seed)
    _log(f"training groups: {json.dumps(gstats)}")
    stats = training.train(checkpoint_in, checkpoint_out, loss_out, corpus_texts=corpus, query_texts=queries,
                           groups=groups, nway=nway, use_labels=use_labels, seed=seed,
                           query_maxlen=query_maxlen, doc_maxlen=doc_maxlen, **hyper)
    _log(json.dumps({**gstats, **stats}))
    return stats


def evaluate_retriever(checkpoint: str, index_dir: str, queries_path: str, qrels_path: str, out_dir: str, *,
                       split: str, k: int, measures: Sequence[str], iteration: int, search: dict) -> pd.DataFrame:
    """Search the ``split`` queries; write run.parquet, run.trec and metrics.parquet into ``out_dir``."""
    from . import student

    queries, qrels = _split_queries(queries_path, qrels_path, split)
    run = student.search(checkpoint, index_dir, queries, k, progress_label="evaluate", **search)
    return _write_eval(run, qrels, Path(out_dir), measures, system=f"iteration {iteration}", iteration=iteration)


def _write_eval(run, qrels, out: Path, measures, *, system: str, iteration: int | None) -> pd.DataFrame:
    table = evaluate.metrics(run, qrels, measures, system=system, iteration=iteration)
    io.write_table(run, "run", out / "run.parquet")
    evaluate.write_trec(run, out / "run.trec", tag=system.replace(" ", "-"))
    io.write_table(table, "metrics", out / "metrics.parquet")
    _log(table.to_string(index=False))
    return table


def rerank_pointwise(run_path: str, corpus_path: str, queries_path: str, qrels_path: str, out_dir: str, *,
                     split: str, depth: int, measures: Sequence[str], model: str, family: str, max_length: int,
                     batch_size: int) -> pd.DataFrame:
    """The pointwise teacher as a reranker of the top-``depth`` of a run (e.g. iteration 0's)."""
    from . import teachers

    run = io.read_table(run_path, "run")
    corpus = _texts(io.read_table(corpus_path, "corpus"))
    queries, qrels = _split_queries(queries_path, qrels_path, split)
    head = run[run["rank"] <= depth]
    scorer = teachers.load_pointwise(model, family, max_length=max_length, batch_size=batch_size)
    scores = pd.Series(scorer.score([queries[q] for q in head["query_id"]], [corpus[d] for d in head["doc_id"]],
                                    progress_label="rerank-pointwise"), index=head.index)
    reranked = evaluate.rerank_top(run, scores, depth)
    return _write_eval(reranked, qrels, Path(out_dir), measures,
                       system=f"pointwise teacher (top-{depth} of iteration 0)", iteration=None)


def rerank_pairwise(run_path: str, corpus_path: str, queries_path: str, qrels_path: str, out_dir: str, *,
                    split: str, depth: int, measures: Sequence[str], model: str, family: str, max_length: int,
                    batch_size: int) -> pd.DataFrame:
    """The pairwise teacher as a reranker: every ordered pair of a run's top-``depth`` (e.g. the
    pointwise teacher's), aggregated with duoT5's sym-sum."""
    from . import teachers

    run = io.read_table(run_path, "run")
    corpus = _texts(io.read_table(corpus_path, "corpus"))
    queries, qrels = _split_queries(queries_path, qrels_path, split)
    head = run[run["rank"] <= depth][["query_id", "doc_id"]]
    ordered = head.merge(head, on="query_id", suffixes=("_a", "_b"))
    ordered = ordered[ordered["doc_id_a"] != ordered["doc_id_b"]].rename(
        columns={"doc_id_a": "doc_a", "doc_id_b": "doc_b"}).reset_index(drop=True)
    scorer = teachers.load_pairwise(model, family, max_length=max_length, batch_size=batch_size)
    ordered["p_ab"] = scorer.prob([queries[q] for q in ordered["query_id"]], [corpus[d] for d in ordered["doc_a"]],
                                  [corpus[d] for d in ordered["doc_b"]], progress_label="rerank-pairwise")
    agg = evaluate.sym_sum(ordered)
    scores = run.merge(agg, on=["query_id", "doc_id"], how="left")["score_y"]
    scores.index = run.index
    reranked = evaluate.rerank_top(run, scores, depth)
    return _write_eval(reranked, qrels, Path(out_dir), measures,
                       system=f"pairwise teacher (top-{depth} of the pointwise teacher)", iteration=None)


def summarize(metric_paths: Sequence[str], out: str, out_tsv: str | None = None) -> pd.DataFrame:
    table = evaluate.summary([io.read_table(p, "metrics") for p in metric_paths])
    with io.atomic_path(out) as tmp:
        table.to_parquet(tmp, index=False)
    if out_tsv:
        with io.atomic_path(out_tsv) as tmp:
            table.to_csv(tmp, sep="\t", index=False, float_format="%.4f")
    _log(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return table
