"""The pipeline's stages: each reads Parquet artifacts, does one step, writes its outputs atomically.

These functions are what the Snakemake rules run (through :mod:`pairdistill.cli`); they take
paths and plain settings, so any stage can also be run by hand or from a notebook. A stage's
flags are its parameters (see :mod:`pairdistill.cli`); the settings several stages share are
described here once.

Args:
    model: fitted teacher dir, local path, cached hub id or 'minilm'
    precision: the teacher's dtype when scoring; auto: bf16 on a GPU that has it (fusion: always fp32)
    prompt: instruct-* families: the prompt template, with {query} and {passage} (pairwise: {query},
        {passage_a}, {passage_b}); default: the paper's
    labels: instruct-* families: the label words, each one token (pointwise: relevant, not;
        pairwise: passage A, passage B); default: Yes No / A B
    cache: earlier iterations' files of this shard: scores of the same teacher are reused
    part_rows: rows per resumable part
    eval_set: name of the evaluation set in the metrics, e.g. msmarco/dev
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Annotated, Callable, Literal, Sequence, TypedDict

import numpy as np
import pandas as pd

from . import data, evaluate, io, pairs, runtime, shards
from .cli import Opt


Precision = Literal["auto", "fp32", "bf16", "fp16"]


class Search(TypedDict):
    """PLAID's search settings (evaluate.search)."""

    ncells: int
    centroid_score_threshold: float
    ndocs: int


class DprSettings(TypedDict, total=False):
    """A DPR student's settings (student.dpr); the keys left out take their defaults.

    Args:
        shared: dpr: one encoder for queries and passages
        scale: dpr: score = scale * similarity (default 20 with cosine, 1 with dot)
    """

    shared: bool
    pooling: Literal["mean", "cls"]
    score: Literal["dot", "cosine"]
    scale: float


class DprIndex(TypedDict, total=False):
    """A DPR checkpoint's faiss index (index.dpr); the keys left out take their defaults.

    Args:
        type: a DPR checkpoint's faiss index: exact inner product (default) or IVF
        nlist: ivf: k-means lists (at most one per passage)
        nprobe: ivf: lists searched per query
    """

    type: Annotated[Literal["flat", "ivf"], Opt(flag="dpr-index")]
    nlist: int
    nprobe: int


class Inference(TypedDict, total=False):
    """The inference-only forward passes (inference.*, :mod:`pairdistill.inference`); keys left
    out take the default, torch / none / fp32, under which today's torch code runs unchanged.

    Args:
        backend: inference.backend: encodings and teacher scores without gradients on torch (eager), onnx, openvino or auto (openvino on a CPU where installed, else torch)
        quantize: inference.quantize: int8 (torch: dynamic; openvino: NNCF, calibrated on the job's own texts)
        precision: inference.precision: bf16 (torch, or openvino on a CPU with native bf16)
    """

    backend: Literal["torch", "onnx", "openvino", "auto"]
    quantize: Literal["none", "int8"]
    precision: Literal["fp32", "bf16"]


def _with_inference(fn: Callable) -> Callable:
    """The stage ``fn`` (which has an ``inference`` parameter) run under those settings
    (:func:`pairdistill.inference.pipeline.use`: its encoders and scorers read them)."""

    @functools.wraps(fn)
    def run(*args, inference: Inference | None = None, **kwargs):
        from .inference import pipeline

        with pipeline.use(inference):
            return fn(*args, inference=inference, **kwargs)

    return run


def _log(msg: str) -> None:
    print(msg, flush=True)


def _texts(corpus: pd.DataFrame) -> dict[str, str]:
    return {d: data.passage_text(t, x) for d, t, x in corpus[["doc_id", "title", "text"]].itertuples(index=False)}


def _split_queries(queries_path: str, qrels_path: str, split: str, *, judged_only: bool = False,
                   query_ids=None) -> tuple[dict[str, str], pd.DataFrame]:
    """The queries of ``split`` (id -> text) and its qrels; ``judged_only`` keeps the queries with
    qrels (evaluation); ``query_ids`` restricts both to those queries, read row group by row group."""
    if query_ids is None:
        queries, qrels = io.read_table(queries_path, "queries"), io.read_table(qrels_path, "qrels")
    else:
        queries = io.read_rows(queries_path, "queries", "query_id", query_ids)
        qrels = io.read_rows(qrels_path, "qrels", "query_id", query_ids)
    queries = queries[queries["split"] == split]
    qrels = qrels[qrels["split"] == split]
    if queries.empty and query_ids is None:
        raise ValueError(f"{queries_path}: no queries for split {split!r}")
    if judged_only:
        if qrels.empty:
            raise ValueError(f"{qrels_path}: no qrels for split {split!r}")
        queries = queries[queries["query_id"].isin(set(qrels["query_id"]))]
    return dict(queries[["query_id", "text"]].itertuples(index=False)), qrels


def _passages(corpus_path: str, doc_ids) -> dict[str, str]:
    """Texts of the given passages only (a shard's), scanned from the corpus row group by row group."""
    return _texts(io.read_rows(corpus_path, "corpus", "doc_id", doc_ids))


def _query_texts(queries_path: str, query_ids) -> dict[str, str]:
    rows = io.read_rows(queries_path, "queries", "query_id", query_ids, columns=["query_id", "text"])
    return dict(rows.drop_duplicates("query_id")[["query_id", "text"]].itertuples(index=False))


def sample_queries(query_ids: Sequence[str], max_queries: int | None, seed: int) -> list[str]:
    """A seeded subset (all when ``max_queries`` is None or large enough), in sorted order."""
    ids = sorted(query_ids)
    if max_queries is None or max_queries >= len(ids):
        return ids
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(ids, size=max_queries, replace=False).tolist())


# --------------------------------------------------------------------------------------------

def prepare(data_dir: str, dataset: str, splits: Sequence[str], out_dir: str, *,
            format: Literal["beir", "msmarco"] = "beir",
            files: dict | None = None, query_splits: dict | None = None, seed: int = 0) -> dict:
    """Corpus, queries and qrels (BEIR layout) -> Parquet.

    The collection's corpus, queries and qrels; ``splits`` may name derived splits of
    ``query_splits`` (:mod:`pairdistill.query_splits`, partitions seeded by ``seed``).

    Args:
        files: msmarco: JSON {"collection": ..., "queries": {split: ...}, "qrels": {split: ...}}
        query_splits: derived splits, JSON {"adapt": {"from": "test", "share": 0.5}, "heldout":
            {"from": "test", "rest_of": ["adapt"]}}; --splits may name them
        seed: the derived splits' partition seed
    """
    out = Path(out_dir)
    stats = data.prepare(data_dir, dataset, list(splits), out / "corpus.parquet", out / "queries.parquet",
                         out / "qrels.parquet", format=format, files=files or None,
                         query_splits=query_splits or None, seed=seed)
    _log(json.dumps(stats))
    return stats


def prepare_lotte(root: str, topic: str, split: str, query_sets: Sequence[Literal["search", "forum"]],
                  out_dir: str) -> dict:
    """A LoTTE topic (collection, questions, qas) -> Parquet.

    A LoTTE topic's collection, questions (a split per query set) and answer passages (qrels).

    Args:
        root: the LoTTE release: <root>/<topic>/<split>/
        topic: writing, recreation, science, technology, lifestyle or pooled
        split: dev or test
    """
    from .loaders import lotte

    out = Path(out_dir)
    stats = lotte.prepare(root, topic, split, query_sets, out / "corpus.parquet", out / "queries.parquet",
                          out / "qrels.parquet")
    _log(json.dumps(stats))
    return stats


def prepare_qa_passages(passages: str, out: str) -> dict:
    """DPR's passages (psgs_w100.tsv) -> corpus Parquet.

    DPR's passages file (psgs_w100.tsv) streamed into a corpus artifact."""
    from .loaders import qa

    stats = qa.write_passages(passages, out)
    _log(json.dumps(stats))
    return stats


def prepare_qa_questions(questions: str, name: str, out_dir: str) -> dict:
    """DPR's questions with answers (*.qa.csv) -> queries and answers Parquet.

    A DPR questions file (*.qa.csv): its queries (split ``name``) and their answer strings.

    Args:
        name: the question set's name: the split of its queries
    """
    from .loaders import qa

    out = Path(out_dir)
    stats = qa.prepare_questions(questions, name, out / "queries.parquet", out / "answers.parquet")
    _log(json.dumps(stats))
    return stats


def init_checkpoint(base: str, out: str, *, dim: int, query_maxlen: int, doc_maxlen: int, seed: int = 0,
                    projection: Literal["random", "pca"] = "random", corpus_path: str | None = None,
                    projection_passages: int = 512, arch: Literal["colbert", "dpr"] = "colbert",
                    dpr: Annotated[DprSettings | None, Opt(prefix="dpr-")] = None) -> None:
    """Iteration-0 ColBERT checkpoint.

    Iteration 0's checkpoint; a ``pca`` projection is fitted on a seeded sample of
    ``projection_passages`` passages of the corpus. ``arch`` dpr: a DPR student on ``base`` with
    the settings ``dpr`` (student.dpr; ``dim`` and the projection are ColBERT's, unused).

    Args:
        projection: the new projection: colbert-ai's random initialisation, or PCA of passage tokens
        corpus_path: pca: the corpus whose passages it samples
        projection_passages: pca: passages sampled
        arch: the student: ColBERT, or a single-vector DPR dual encoder on --base (--dim and the
            projection unused)
    """
    from .students import colbert

    if arch == "dpr":
        from .students import DPRSettings, dpr as dpr_student

        settings = DPRSettings.from_config({"dpr": dpr or {}, "query_maxlen": query_maxlen, "doc_maxlen": doc_maxlen})
        dpr_student.init_checkpoint(base, out, settings, seed=seed)
        _log(f"initial DPR checkpoint from {base} ({json.dumps(settings.to_json())}) -> {out}")
        return
    passages: list[str] = []
    if projection == "pca":
        if corpus_path is None:
            raise ValueError("init-checkpoint --projection pca needs --corpus")
        texts = list(_texts(io.read_table(corpus_path, "corpus")).values())
        rng = np.random.default_rng(seed)
        chosen = np.sort(rng.choice(len(texts), size=min(projection_passages, len(texts)), replace=False))
        passages = [texts[i] for i in chosen]
    colbert.init_checkpoint(base, out, dim=dim, query_maxlen=query_maxlen, doc_maxlen=doc_maxlen, seed=seed,
                            projection=projection, passages=passages)
    _log(f"initial checkpoint from {base} ({projection} projection"
         f"{f' of {len(passages)} passages' if passages else ''}) -> {out}")


@_with_inference
def index(checkpoint: str, corpus_path: str, out: str, *, nbits: int, doc_maxlen: int, kmeans_niters: int = 4,
          reuse_sample_embeddings: bool = True, seed: int = 12345, num_partitions: int | None = None,
          query_maxlen: int | None = None, drop_self_matches: bool = False,
          dpr_index: Annotated[DprIndex | None, Opt(prefix="dpr-")] = None, inference: Annotated[Inference | None, Opt(prefix="inference-")] = None) -> dict:
    """PLAID index of the corpus.

    The checkpoint's index of the corpus: PLAID for a ColBERT student, faiss for a DPR one
    (``dpr_index``: index.dpr's type, nlist, nprobe; the PLAID settings are unused). ``query_maxlen``
    and ``drop_self_matches`` are kept in it for every search of this collection (BEIR's ArguAna:
    300-token queries, its own argument dropped).

    Args:
        num_partitions: k-means centroids (null: colbert's choice)
        query_maxlen: query tokens when this collection is searched (kept in the index); default: the checkpoint's
        drop_self_matches: searches drop a hit whose id is the query's own (BEIR's ArguAna); kept in the index
    """
    from . import students
    from .students import colbert

    corpus = io.read_table(corpus_path, "corpus")
    texts = list(_texts(corpus).values())  # document ids are unique, so this keeps corpus order
    if students.arch_of(checkpoint) == "dpr":
        from .students import dpr

        s = students.index_settings({"dpr": dpr_index or {}})
        stats = dpr.build_index(checkpoint, corpus, texts, out, index_type=s["type"], nlist=s["nlist"],
                                nprobe=s["nprobe"], seed=seed, doc_maxlen=doc_maxlen, query_maxlen=query_maxlen,
                                drop_self_matches=drop_self_matches)
        _log(json.dumps(stats))
        return stats
    stats = colbert.build_index(checkpoint, corpus, texts, out, nbits=nbits, doc_maxlen=doc_maxlen,
                                kmeans_niters=kmeans_niters, reuse_sample_embeddings=reuse_sample_embeddings,
                                seed=seed, num_partitions=num_partitions, query_maxlen=query_maxlen,
                                drop_self_matches=drop_self_matches)
    _log(json.dumps(stats))
    return stats


@_with_inference
def retrieve(checkpoint: str, index: str, queries_path: str, qrels_path: str, out: str, *, split: str,
             k: int, max_queries: int | None = None, seed: int = 0, search: Search,
             shard: str | None = None, inference: Annotated[Inference | None, Opt(prefix="inference-")] = None) -> pd.DataFrame:
    """Top-k of a split's queries.

    Top-``k`` for the (sampled) queries of ``split`` in ``shard`` (all for None) -> the "run" schema.

    The seeded sample is drawn from the whole split first, then cut by shard, so the shards of a
    round together hold exactly the queries an unsharded run would.

    Args:
        shard: e.g. 003-of-008: only the queries of that shard
    """
    from .students import colbert

    ids = io.read_table(queries_path, "queries", columns=["split", "query_id"])
    ids = ids.loc[ids["split"] == split, "query_id"].tolist()
    if not ids:
        raise ValueError(f"{queries_path}: no queries for split {split!r}")
    chosen = sample_queries(ids, max_queries, seed)
    chosen = [q for q, keep in zip(chosen, shards.in_shard(chosen, shard)) if keep]
    texts = _query_texts(queries_path, chosen)
    run = colbert.search(checkpoint, index, {q: texts[q] for q in chosen}, k,
                         progress_label="retrieve", **search)
    io.write_table(run, "run", out)
    _log(f"retrieved top-{k} for {run['query_id'].nunique()} of {len(chosen)} queries"
         f"{f' (shard {shard})' if shard else ''} -> {out}")
    return run


def fit_teacher(kind: Literal["pointwise", "pairwise"], negatives_path: str, corpus_path: str, queries_path: str,
                qrels_path: str, out: str, loss_out: str, *, split: str, negatives_per_query: int,
                init: str = runtime.MINILM, max_length: int, batch_size: int, epochs: int = 1, lr: float,
                warmup: float = 0.1, seed: int = 0) -> dict:
    """Fit the embedded default's pointwise or pairwise teacher.

    Fit the embedded default's pointwise or pairwise teacher on the labelled positives of ``split``
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


@_with_inference
def fit_fusion_teacher(kind: Literal["pointwise", "pairwise"], corpus_path: str, queries_path: str, qrels_path: str,
                       out: str, loss_out: str, *, split: str, seed: int = 0, plain_out: str | None = None,
                       pointwise_dir: str | None = None,
                       init: str = "minilm", max_length: int = 128, heldout: float = 0.25, candidates: int = 100,
                       negatives: int = 1, batch_size: int = 16, epochs: int = 1, lr: float = 2e-5,
                       warmup: float = 0.1, scale: float = 20.0, depth: int = 30, delta: int = 10,
                       pair_features: Literal["margin", "cross"] = "margin", inference: Annotated[Inference | None, Opt(prefix="inference-")] = None) -> dict:
    """Fit a fusion teacher (BM25 + bi-encoders, fitted weights).

    Fit a fusion teacher (:mod:`pairdistill.teachers.fusion`) on the labelled queries of ``split``:
    ``pointwise`` writes the fused teacher to ``out`` and the plain BM25 + bi-encoder fusion to
    ``plain_out``; ``pairwise`` fits the pair terms on top of ``pointwise_dir``.

    Args:
        plain_out: pointwise: where the plain BM25 + bi-encoder fusion goes
        pointwise_dir: pairwise: the fitted fusion pointwise teacher
        pair_features: pairwise: the pair terms (pairdistill.teachers.fusion.pair_features)
    """
    from .errors import SettingError
    from .teachers import fusion

    if kind == "pointwise" and not plain_out:
        raise SettingError("fit-fusion --kind pointwise needs --plain-out")
    if kind == "pairwise" and not pointwise_dir:
        raise SettingError("fit-fusion --kind pairwise needs --pointwise-dir")

    queries, qrels = _split_queries(queries_path, qrels_path, split)
    rel = qrels[qrels["relevance"] > 0]
    positives = {q: dict(zip(g["doc_id"], g["relevance"].astype(int))) for q, g in rel.groupby("query_id")}
    if kind == "pointwise":
        corpus = io.read_table(corpus_path, "corpus")
        texts = list(_texts(corpus).values())
        work = Path(out).parent / f".{Path(out).name}.work"
        stats = fusion.fit_fusion(corpus, texts, queries, positives, out, plain_out, init=runtime.resolve_model(init),
                                  max_length=max_length, heldout=heldout, candidates=candidates,
                                  negatives=negatives, batch_size=batch_size, epochs=epochs, lr=lr, warmup=warmup,
                                  scale=scale, seed=seed, work_dir=work, loss_log=loss_out, log=_log)
        shutil.rmtree(work, ignore_errors=True)
    else:
        stats = fusion.fit_fusion_pairwise(pointwise_dir, out, queries, positives, depth=depth, delta=delta,
                                           feature_set=pair_features, log=_log)
        # a closed-form fit, no training loop: the curve is its one step and final log loss
        curve = pd.DataFrame({"step": [1], "loss": [stats["log_loss"]], "lr": [0.0], "elapsed_s": [stats["seconds"]]})
        io.write_table(curve, "teacher_loss", loss_out)
    _log(json.dumps(stats, default=float))
    return stats


@_with_inference
def rebase_fusion_teacher(teacher: str, corpus_path: str, out: str, reuse: str | None = None, *,
                          inference: Annotated[Inference | None, Opt(prefix="inference-")] = None) -> dict:
    """A fitted fusion teacher re-based on another corpus (BM25 statistics and corpus embeddings
    recomputed, fitted weights kept).

    A fitted fusion teacher of another run re-based on this run's corpus
    (:func:`pairdistill.teachers.fusion.rebase_fusion`): BM25 statistics and corpus embeddings recomputed,
    the fitted weights and bi-encoders kept; ``reuse``, a teacher re-based on this corpus already,
    lends the corpus embeddings of the bi-encoders both share.

    Args:
        teacher: the fitted fusion teacher directory (fusion or fusion-pairwise)
        corpus_path: the new corpus (corpus.parquet)
        reuse: a teacher re-based on this corpus already (the pointwise one): the corpus embeddings of
            the bi-encoders both share are taken from it
    """
    from .teachers import fusion

    corpus = io.read_table(corpus_path, "corpus")
    texts = list(_texts(corpus).values())
    work = Path(out).parent / f".{Path(out).name}.work"
    stats = fusion.rebase_fusion(runtime.resolve_model(teacher), corpus, texts, out, work_dir=work, reuse=reuse,
                                 log=_log)
    shutil.rmtree(work, ignore_errors=True)
    _log(json.dumps(stats, default=float))
    return stats


def _cached_scores(paths: Sequence[str], name: str, identity: str, query_ids, columns: list[str]) -> pd.DataFrame:
    """Rows of earlier iterations' score files made by the same teacher (newest first), for these queries."""
    frames = []
    for path in reversed(list(paths)):
        if io.read_metadata(path).get("teacher") != identity:
            _log(f"cache: {path} was scored by another teacher; not reused")
            continue
        frames.append(io.read_rows(path, name, "query_id", query_ids, columns=columns))
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True)


def _hit_line(stage: str, hits: int, total: int) -> str:
    rate = hits / total if total else 0.0
    return f"{stage} teacher cache: {hits} of {total} reused ({rate:.1%}), {total - hits} scored"


def _reuse_or_score(rows: pd.DataFrame, hits: pd.DataFrame, keys: list[str], stage: str,
                    make_score: Callable[[pd.DataFrame], Callable], out: str, *, part_rows: int,
                    identity: str, text_files: Sequence[str]) -> pd.DataFrame:
    """``rows`` with the cached scores of ``hits`` (matched on ``keys``, marked ``cached``) and the
    others scored in resumable parts. ``make_score(todo)`` loads the teacher and the texts of the
    rows to score and returns ``score(chunk) -> {column: values}``; it runs only when a part is
    left to score. Parts are tied to the teacher ``identity`` and to the size and modification
    time of ``text_files`` (a re-prepared corpus drops them)."""
    rows = rows.merge(hits, on=keys, how="left")
    rows["cached"] = rows["cached"].fillna(False).astype(bool)
    todo = rows.loc[~rows["cached"], keys]
    _log(_hit_line(stage, int(rows["cached"].sum()), len(rows)))
    if len(todo):
        scorer = []

        def score(chunk: pd.DataFrame) -> dict[str, np.ndarray]:
            if not scorer:
                scorer.append(make_score(todo))
            return scorer[0](chunk)

        stamps = [[str(p), os.stat(p).st_size, os.stat(p).st_mtime_ns] for p in text_files]
        scored = shards.score_in_parts(todo.reset_index(drop=True), score, out, part_rows=part_rows,
                                       identity=json.dumps([identity, *stamps]), log=_log)
        for column in scored.columns:
            rows.loc[todo.index, column] = scored[column].to_numpy()
    return rows


@_with_inference
def pointwise(topk_path: str, corpus_path: str, queries_path: str, qrels_path: str, out: str, *,
              split: str, model: str, family: str = "auto", max_length: int, batch_size: int,
              add_positives: bool = True, cache: Sequence[str] = (), part_rows: int = 4096,
              precision: Precision = "fp32", prompt: str | None = None,
              labels: tuple[str, str] | None = None, inference: Annotated[Inference | None, Opt(prefix="inference-")] = None) -> pd.DataFrame:
    """Pointwise teacher scores of a top-k.

    Score every retrieved (query, passage) with the pointwise teacher; with ``add_positives`` the
    labelled positives of the retrieved queries are scored too (retriever columns null for those
    not retrieved), since training puts a positive in every group.

    A (query, passage) found in a ``cache`` file (an earlier iteration's output for the same
    shard) scored by the same teacher is reused. The rest is scored in resumable parts. Reads only
    the shard's queries, qrels and passages. ``prompt`` and ``labels``: an instruction teacher's
    (:mod:`pairdistill.teachers.instruct`).

    Args:
        add_positives: also score the labelled positives the retriever missed
    """
    from . import teachers

    own = {"prompt": prompt, "labels": labels}
    identity = teachers.identity(model, family, "pointwise", max_length, precision, **own)  # a missing model fails here
    topk = io.read_table(topk_path, "run")
    query_ids = sorted(set(topk["query_id"]))
    rows = topk.rename(columns={"rank": "retriever_rank", "score": "retriever_score"})
    if add_positives:
        _, qrels = _split_queries(queries_path, qrels_path, split, query_ids=query_ids)
        pos = qrels[qrels["relevance"] > 0][["query_id", "doc_id"]].drop_duplicates()
        extra = pos.merge(rows[["query_id", "doc_id"]], how="left", indicator=True)
        extra = extra[extra["_merge"] == "left_only"].drop(columns="_merge")
        rows = pd.concat([rows, extra], ignore_index=True)
    rows = rows.reset_index(drop=True)
    keys = ["query_id", "doc_id"]
    hits = _cached_scores(cache, "pointwise", identity, query_ids, [*keys, "teacher_score"])
    hits = hits.drop_duplicates(keys).assign(cached=True)

    def make_score(todo: pd.DataFrame) -> Callable:
        scorer = teachers.load_pointwise(model, family, max_length=max_length, batch_size=batch_size,
                                         precision=precision, **own)
        queries = _query_texts(queries_path, todo["query_id"].unique())
        corpus = _passages(corpus_path, todo["doc_id"].unique())
        _log(f"pointwise teacher {scorer.path} ({scorer.family}) on {len(todo)} pairs")
        return lambda chunk: {"teacher_score": scorer.score([queries[x] for x in chunk["query_id"]],
                                                            [corpus[x] for x in chunk["doc_id"]],
                                                            progress_label="pointwise")}

    rows = _reuse_or_score(rows, hits, keys, "pointwise", make_score, out, part_rows=part_rows,
                           identity=identity, text_files=[corpus_path, queries_path])
    rows["teacher_score"] = rows["teacher_score"].astype("float32")
    rows["_tie"] = rows["retriever_rank"].fillna(np.inf)
    rows["teacher_rank"] = evaluate.rank_by_score(rows.rename(columns={"_tie": "rank"}), "teacher_score")
    rows = rows.drop(columns="_tie").astype({"retriever_rank": "Int32", "retriever_score": "Float32"})
    rows = rows.sort_values(["query_id", "teacher_rank"]).reset_index(drop=True)
    io.write_table(rows, "pointwise", out, metadata={"teacher": identity})
    shards.clear_parts(out)
    return rows


def sample_pairs(pointwise_path: str, out: str, *, delta: int, pairs_per_query: int, seed: int = 0,
                 iteration: int | None = None) -> pd.DataFrame:
    """Pairs with |i-j| < delta on the pointwise-reranked list.

    Pairs of a (shard's) pointwise list, drawn per query from ``(seed, iteration, query_id)``.

    Args:
        iteration: the distillation round, part of each query's seed (each round draws afresh)
    """
    ranked = io.read_table(pointwise_path, "pointwise")
    sampled = pairs.sample_pairs(ranked, delta=delta, pairs_per_query=pairs_per_query, seed=seed,
                                 iteration=iteration)
    io.write_table(sampled, "pairs", out)
    counts = pairs.pair_counts(sampled, ranked)
    _log(f"sampled {len(sampled)} pairs for {len(counts)} queries (delta {delta}, up to {pairs_per_query} "
         f"per query); {int((counts['n_sampled'] < pairs_per_query).sum())} queries had fewer candidates")
    return sampled


def _cached_pairs(paths: Sequence[str], identity: str, query_ids, both_orders: bool) -> pd.DataFrame:
    """(query_id, doc_a, doc_b) -> p_ab, p_ba from earlier files; with both orders a pair scored
    as (b, a) serves (a, b) with the two probabilities swapped."""
    cols = ["query_id", "doc_a", "doc_b", "p_ab", "p_ba"]
    old = _cached_scores(paths, "pairwise", identity, query_ids, cols)
    if both_orders:
        old = old[old["p_ba"].notna()]
        swapped = old.rename(columns={"doc_a": "doc_b", "doc_b": "doc_a", "p_ab": "p_ba", "p_ba": "p_ab"})
        old = pd.concat([old, swapped[cols]], ignore_index=True)
    return old.drop_duplicates(["query_id", "doc_a", "doc_b"]).assign(cached=True)


@_with_inference
def pairwise(pairs_path: str, corpus_path: str, queries_path: str, out: str, *, model: str, family: str = "auto",
             max_length: int, batch_size: int, both_orders: bool = True, cache: Sequence[str] = (),
             part_rows: int = 4096, precision: Precision = "fp32", prompt: str | None = None,
             labels: tuple[str, str] | None = None, inference: Annotated[Inference | None, Opt(prefix="inference-")] = None) -> pd.DataFrame:
    """Pairwise teacher P(a > b | q) of the sampled pairs.

    P(doc_a > doc_b | q) for every sampled pair; with ``both_orders`` also P(doc_b > doc_a), and
    ``prob`` is their symmetrised mean (p_ab + 1 - p_ba) / 2, which cancels position bias.

    Pairs already scored by the same teacher in a ``cache`` file are reused; the rest is scored in
    resumable parts."""
    from . import teachers

    own = {"prompt": prompt, "labels": labels}  # an instruction teacher's (teachers.instruct)
    identity = teachers.identity(model, family, "pairwise", max_length, precision, **own)
    sampled = io.read_table(pairs_path, "pairs")
    query_ids = sorted(set(sampled["query_id"]))
    keys = ["query_id", "doc_a", "doc_b"]

    def make_score(todo: pd.DataFrame) -> Callable:
        scorer = teachers.load_pairwise(model, family, max_length=max_length, batch_size=batch_size,
                                        precision=precision, **own)
        queries = _query_texts(queries_path, todo["query_id"].unique())
        corpus = _passages(corpus_path, pd.concat([todo["doc_a"], todo["doc_b"]]).unique())
        _log(f"pairwise teacher {scorer.path} ({scorer.family}) on {len(todo)} pairs"
             f"{' in both orders' if both_orders else ''}")

        def score(chunk: pd.DataFrame) -> dict[str, np.ndarray]:
            q = [queries[x] for x in chunk["query_id"]]
            a, b = [corpus[x] for x in chunk["doc_a"]], [corpus[x] for x in chunk["doc_b"]]
            if not both_orders:
                return {"p_ab": scorer.prob(q, a, b, progress_label="pairwise")}
            probs = scorer.prob(q + q, a + b, b + a, progress_label="pairwise")
            return {"p_ab": probs[: len(q)], "p_ba": probs[len(q):]}

        return score

    rows = _reuse_or_score(sampled[[*keys, "rank_a", "rank_b"]], _cached_pairs(cache, identity, query_ids, both_orders),
                           keys, "pairwise", make_score, out, part_rows=part_rows,
                           identity=json.dumps([identity, both_orders]), text_files=[corpus_path, queries_path])
    if not both_orders:
        rows["p_ba"] = None
    rows["p_ab"] = rows["p_ab"].astype("float32")
    rows["p_ba"] = pd.array(rows["p_ba"], dtype="Float32")
    if both_orders:
        rows["prob"] = ((rows["p_ab"] + (1.0 - rows["p_ba"].astype("float32"))) / 2.0).astype("float32")
    else:
        rows["prob"] = rows["p_ab"]
    io.write_table(rows, "pairwise", out, metadata={"teacher": identity})
    shards.clear_parts(out)
    return rows


def gather(shards: Sequence[str], schema: Literal["run", "pointwise", "pairs", "pairwise"], out: str) -> int:
    """One Parquet file from a stage's shard files.

    One Parquet file for a stage and iteration from its shard files, streamed shard by shard."""
    rows = io.concat_files(list(shards), schema, out)
    _log(f"gathered {rows} rows of {schema} from {len(shards)} shard(s) -> {out}")
    if schema in ("pointwise", "pairwise"):
        cached = int(io.read_table(out, columns=["cached"])["cached"].sum())
        _log(_hit_line(schema, cached, rows))
    return rows


def teacher_cache_report(paths: Sequence[str], out: str | None = None) -> pd.DataFrame:
    """Per iteration and teacher: rows, rows reused from an earlier iteration, hit rate."""
    import re

    records = []
    for path in paths:
        m = re.search(r"iter-(\d+)/(pointwise|pairwise)\.parquet$", str(path))
        if not m:
            raise ValueError(f"{path}: expected results/iter-<n>/<pointwise|pairwise>.parquet")
        cached = io.read_table(path, columns=["cached"])["cached"]
        records.append({"iteration": int(m.group(1)), "teacher": m.group(2), "rows": len(cached),
                        "reused": int(cached.sum()), "hit_rate": float(cached.mean()) if len(cached) else 0.0})
    table = pd.DataFrame(records, columns=["iteration", "teacher", "rows", "reused", "hit_rate"])
    table = table.sort_values(["iteration", "teacher"]).reset_index(drop=True)
    if out:
        with io.atomic_path(out) as tmp:
            table.to_csv(tmp, sep="\t", index=False, float_format="%.4f")
    return table


def read_negatives(path: str, query_ids=None) -> dict[str, list[str]]:
    """Mined negatives per query, in the file's order: a Parquet file with ``query_id`` and
    ``doc_id`` columns (a run such as ``results/teachers/negatives.parquet``, ordered by ``rank``
    when it has one), or JSON lines as the DRAGON negatives the authors used
    (``{"query_id": .., "hard_negative_ctxs": [{"docidx": ..}, ..]}``). ``query_ids`` keeps those."""
    wanted = None if query_ids is None else set(map(str, query_ids))
    if str(path).endswith(".parquet"):
        import pyarrow.parquet as pq

        names = pq.read_schema(path).names
        if not {"query_id", "doc_id"} <= set(names):
            raise ValueError(f"{path}: a negatives file needs query_id and doc_id columns, has {names}")
        cols = ["query_id", "doc_id"] + (["rank"] if "rank" in names else [])
        frame = pd.read_parquet(path, columns=cols)
        frame["query_id"] = frame["query_id"].astype(str)
        frame["doc_id"] = frame["doc_id"].astype(str)
        if wanted is not None:
            frame = frame[frame["query_id"].isin(wanted)]
        if "rank" in frame:
            frame = frame.sort_values(["query_id", "rank"], kind="stable")
        return frame.groupby("query_id", sort=False)["doc_id"].apply(list).to_dict()
    from .errors import InputError

    out = {}
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                qid = str(row["query_id"])
                if wanted is None or qid in wanted:
                    out[qid] = [str(c["docidx"]) for c in row.get("hard_negative_ctxs", [])]
            except (ValueError, KeyError, TypeError) as exc:
                raise InputError(path, f"not a negatives line ({exc.__class__.__name__}: {exc})", number) from None
    return out


def draw_negatives(groups, negatives: dict[str, list[str]], positives: dict[str, set[str]], per_query: int,
                   seed: int, known: set[str] | None = None) -> dict:
    """Put ``per_query`` mined negatives into each labelled group (``Group.negatives``), drawn per
    query from ``(seed, query_id)`` without the query's labelled positives (repeated, as the
    authors did, when a query has fewer); unlabelled groups get none. Returns counts."""
    from .pairs import query_seed

    without = repeated = 0
    for g in groups:
        if g.positive_index is None or g.positive_index < 0:
            continue
        pool = [d for d in dict.fromkeys(negatives.get(g.query_id, ()))
                if d not in positives.get(g.query_id, set()) and (known is None or d in known)]
        if not pool:
            without += 1
            continue
        rng = np.random.default_rng(query_seed(seed, g.query_id))
        if len(pool) < per_query:
            repeated += 1
            pool = pool * (per_query // len(pool) + 1)
        g.negatives = [pool[i] for i in rng.choice(len(pool), size=per_query, replace=False)]
    return {"mined_per_query": per_query, "labelled_without_mined": without, "mined_repeated": repeated}


def _whole_batch(word: str) -> int | None:
    """``--micro-batch``: 0 (as the rule passes null) or null is the whole batch."""
    return None if word.lower() in ("none", "null", "all", "", "0") else int(word)


def train(checkpoint: str, corpus_path: str, queries_path: str, qrels_path: str, pointwise_path: str,
          pairwise_path: str, out: str, loss_out: str, *, split: str, nway: int, use_labels: bool = True,
          seed: int = 0, query_maxlen: int, doc_maxlen: int, unlabelled_queries: bool = False,
          state_dir: str | None = None, save_every: int = 50,
          contrastive_negatives: Literal["teacher", "in_batch", "mined"] = "teacher",
          mined_negatives: str | None = None,
          mined_per_query: int = 8, arch: Literal["colbert", "dpr"] | None = None, batch_size: int,
          epochs: int = 1, max_steps: int | None = None, lr: float, warmup: float = 0.1, weight_decay: float = 0.0,
          lambda_kd: float = 1.0, lambda_pair: float = 3.0, temperature: float = 1.0,
          in_batch_negatives: bool = False, micro_batch: Annotated[int | None, Opt(parse=_whole_batch)] = None,
          precision: Precision = "auto", grad_checkpointing: bool = False) -> dict:
    """Checkpoint n -> n+1 with L_CL + lambda_KD L_KD + lambda_pair L_pair.

    Checkpoint n -> n+1. With ``unlabelled_queries`` (and ``use_labels``) queries of ``split``
    without a labelled positive are trained on too, with the KD and pairwise terms only. With
    ``state_dir`` a resumable state is kept there every ``save_every`` steps (removed when done).

    Launched as several processes, each reads and trains on its own share of the queries (a hash
    of the query id): no two read the same rows of the pointwise and pairwise files.
    ``contrastive_negatives: mined`` reads ``mined_negatives`` and gives each labelled group
    ``mined_per_query`` of them.

    Args:
        unlabelled_queries: with --use-labels: also train on queries without a labelled positive
            (KD and pairwise terms only)
        state_dir: keep a resumable training state here (outside the outputs); default: none
        save_every: optimizer steps between two states
        micro_batch: queries per forward/backward (gradient cache); default (or 0): the whole batch at once
        precision: the encoders' precision (accelerate mixed precision); auto: bf16 on a GPU that has it
        grad_checkpointing: recompute the encoder's activations in the backward pass (less memory, ~30% slower)
        contrastive_negatives: L_CL's negatives: the query's teacher-ranked list, other queries' passages, or mined
        mined_negatives: with --contrastive-negatives mined: Parquet (query_id, doc_id) or DRAGON JSON lines
        mined_per_query: mined negatives per labelled query
        arch: the student kind the checkpoint must be (default: whichever it is)
    """
    from . import train as training
    from .errors import SettingError

    world, rank = training.launch_rank()
    queries, qrels = _split_queries(queries_path, qrels_path, split)
    positives: dict[str, set[str]] = {}
    for q, d in qrels.loc[qrels["relevance"] > 0, ["query_id", "doc_id"]].itertuples(index=False):
        positives.setdefault(q, set()).add(d)
    point_cols = ["query_id", "doc_id", "teacher_score", "teacher_rank"]
    pair_cols = ["query_id", "doc_a", "doc_b", "rank_a", "rank_b", "prob"]  # ranks: where a pair's passages are
    # only the columns training uses: at paper scale these files hold ~80M and ~40M rows
    if world == 1:  # read a column at a time by build_groups, each dropped once it is codes
        pointwise_rows = training.ParquetColumns(pointwise_path, "pointwise", point_cols)
        pairwise_rows = training.ParquetColumns(pairwise_path, "pairwise", pair_cols)
    else:  # this process's share of the queries, and only their rows
        share = [q for q in queries if shards.shard_of(q, world) == rank]
        pointwise_rows = io.read_rows(pointwise_path, "pointwise", "query_id", share, columns=point_cols, arrow=True)
        pairwise_rows = io.read_rows(pairwise_path, "pairwise", "query_id", share, columns=pair_cols, arrow=True)
        _log(f"process {rank} of {world}: {len(share)} of {len(queries)} queries of split {split!r}")
    groups, gstats = training.build_groups(pointwise_rows, pairwise_rows, positives, nway=nway,
                                           use_labels=use_labels, seed=seed, unlabelled_queries=unlabelled_queries)
    del pointwise_rows, pairwise_rows
    if contrastive_negatives == "mined":
        if not mined_negatives:
            raise SettingError("train.mined_negatives: contrastive_negatives mined needs a negatives file")
        if not use_labels:
            raise SettingError("train.contrastive_negatives: mined needs use_labels (the contrastive term)")
        mined = read_negatives(mined_negatives, groups.query_id_list())
        gstats.update(draw_negatives(groups, mined, positives, mined_per_query, seed))
    _log(f"training groups: {json.dumps(gstats)}")
    # the passages of the groups (and their mined negatives) only, as Arrow strings
    corpus = training.read_passages(corpus_path, groups.passage_ids())
    lost = sorted(corpus.missing({d for negatives in groups.negatives.values() for d in negatives}))
    if lost:
        raise ValueError(f"{mined_negatives}: {len(lost)} mined negatives are not in the corpus, e.g. {lost[:3]}")
    missing = sorted(set(groups.query_id_list()) - set(queries))
    if missing:
        raise ValueError(f"{queries_path}: no text for {len(missing)} training queries of split {split!r}, "
                         f"e.g. {missing[:3]}")
    stats = training.train(checkpoint, out, loss_out, corpus_texts=corpus, query_texts=queries,
                           groups=groups, nway=nway, use_labels=use_labels, seed=seed,
                           query_maxlen=query_maxlen, doc_maxlen=doc_maxlen, state_dir=state_dir,
                           save_every=save_every, contrastive_negatives=contrastive_negatives, arch=arch,
                           batch_size=batch_size, epochs=epochs, max_steps=max_steps, lr=lr, warmup=warmup,
                           weight_decay=weight_decay, lambda_kd=lambda_kd, lambda_pair=lambda_pair,
                           temperature=temperature, in_batch_negatives=in_batch_negatives, micro_batch=micro_batch,
                           precision=precision, grad_checkpointing=grad_checkpointing)
    _log(json.dumps({**gstats, **stats}))
    return stats


@_with_inference
def evaluate_retriever(checkpoint: str, index: str, queries_path: str, qrels_path: str, out_dir: str, *,
                       split: str, k: int, measures: Sequence[str], iteration: int, search: Search,
                       eval_set: str, inference: Annotated[Inference | None, Opt(prefix="inference-")] = None) -> pd.DataFrame:
    """Search a split's queries; run + metrics + TREC file.

    Search the judged queries of ``split``; write run.parquet, run.trec and metrics.parquet into ``out_dir``."""
    from .students import colbert

    queries, qrels = _split_queries(queries_path, qrels_path, split, judged_only=True)
    run = colbert.search(checkpoint, index, queries, k, progress_label="evaluate", **search)
    return _write_eval(run, qrels, Path(out_dir), measures, system=f"iteration {iteration}", iteration=iteration,
                       eval_set=eval_set)


def _write_eval(run, qrels, out: Path, measures, *, system: str, iteration: int | None, eval_set: str) -> pd.DataFrame:
    table = evaluate.metrics(run, qrels, measures, system=system, iteration=iteration, eval_set=eval_set)
    io.write_table(run, "run", out / "run.parquet")
    evaluate.write_trec(run, out / "run.trec", tag=system.replace(" ", "-"))
    io.write_table(table, "metrics", out / "metrics.parquet")
    _log(table.to_string(index=False))
    return table


@_with_inference
def evaluate_qa(checkpoint: str, index: str, corpus_path: str, queries_path: str, answers_path: str,
                out_dir: str, *, k: Sequence[int], match: Literal["string", "squad"] = "string", iteration: int,
                search: Search, eval_set: str, inference: Annotated[Inference | None, Opt(prefix="inference-")] = None) -> pd.DataFrame:
    """Search a QA set's questions; run + Recall@k by answer match.

    Search every question of an open-domain QA set for its top max(k) passages; write run.parquet,
    run.trec and metrics.parquet (Recall@k: an answer string in one of the top k passages) into ``out_dir``.

    Args:
        k: the cutoffs of Recall@k; searches max(k)
        match: answer normalisation: DPR's string match, or SQuAD's (no punctuation, no articles)
        eval_set: name of the evaluation set in the metrics, e.g. qa/nq
    """
    from . import answers
    from .students import colbert

    queries = io.read_table(queries_path, "queries")
    questions = dict(queries[["query_id", "text"]].itertuples(index=False))
    run = colbert.search(checkpoint, index, questions, max(k), progress_label="evaluate-qa", **search)
    table = answers.qa_metrics(run, corpus_path, answers_path, list(questions), k, match=match,
                               system=f"iteration {iteration}", iteration=iteration, eval_set=eval_set)
    out = Path(out_dir)
    io.write_table(run, "run", out / "run.parquet")
    evaluate.write_trec(run, out / "run.trec", tag=f"iteration-{iteration}")
    io.write_table(table, "metrics", out / "metrics.parquet")
    _log(table.to_string(index=False))
    return table


@_with_inference
def rerank_pointwise(run_path: str, corpus_path: str, queries_path: str, qrels_path: str, out_dir: str, *,
                     split: str, depth: int, measures: Sequence[str], model: str, family: str = "auto", max_length: int,
                     batch_size: int, eval_set: str, system: str | None = None,
                     precision: Precision = "fp32", prompt: str | None = None,
                     labels: tuple[str, str] | None = None, inference: Annotated[Inference | None, Opt(prefix="inference-")] = None) -> pd.DataFrame:
    """The pointwise teacher as a reranker of a run's top.

    The pointwise teacher as a reranker of the top-``depth`` of a run (e.g. iteration 0's).

    Args:
        system: the system's name in the metrics
    """
    from . import teachers

    run = io.read_table(run_path, "run")
    queries, qrels = _split_queries(queries_path, qrels_path, split, judged_only=True)
    head = run[run["rank"] <= depth]
    corpus = _passages(corpus_path, head["doc_id"].unique())
    scorer = teachers.load_pointwise(model, family, max_length=max_length, batch_size=batch_size,
                                     precision=precision, prompt=prompt, labels=labels)
    scores = pd.Series(scorer.score([queries[q] for q in head["query_id"]], [corpus[d] for d in head["doc_id"]],
                                    progress_label="rerank-pointwise"), index=head.index)
    reranked = evaluate.rerank_top(run, scores, depth)
    return _write_eval(reranked, qrels, Path(out_dir), measures,
                       system=system or f"pointwise teacher (top-{depth} of iteration 0)", iteration=None,
                       eval_set=eval_set)


@_with_inference
def rerank_pairwise(run_path: str, corpus_path: str, queries_path: str, qrels_path: str, out_dir: str, *,
                    split: str, depth: int, measures: Sequence[str], model: str, family: str = "auto", max_length: int,
                    batch_size: int, eval_set: str, precision: Precision = "fp32", prompt: str | None = None,
                    labels: tuple[str, str] | None = None, inference: Annotated[Inference | None, Opt(prefix="inference-")] = None) -> pd.DataFrame:
    """The pairwise teacher as a reranker of a run's top.

    The pairwise teacher as a reranker: every ordered pair of a run's top-``depth`` (e.g. the
    pointwise teacher's), aggregated with duoT5's sym-sum."""
    from . import teachers

    run = io.read_table(run_path, "run")
    queries, qrels = _split_queries(queries_path, qrels_path, split, judged_only=True)
    head = run[run["rank"] <= depth][["query_id", "doc_id"]]
    corpus = _passages(corpus_path, head["doc_id"].unique())
    ordered = head.merge(head, on="query_id", suffixes=("_a", "_b"))
    ordered = ordered[ordered["doc_id_a"] != ordered["doc_id_b"]].rename(
        columns={"doc_id_a": "doc_a", "doc_id_b": "doc_b"}).reset_index(drop=True)
    scorer = teachers.load_pairwise(model, family, max_length=max_length, batch_size=batch_size,
                                    precision=precision, prompt=prompt, labels=labels)
    ordered["p_ab"] = scorer.prob([queries[q] for q in ordered["query_id"]], [corpus[d] for d in ordered["doc_a"]],
                                  [corpus[d] for d in ordered["doc_b"]], progress_label="rerank-pairwise")
    agg = evaluate.sym_sum(ordered)
    scores = run.merge(agg, on=["query_id", "doc_id"], how="left")["score_y"]
    scores.index = run.index
    reranked = evaluate.rerank_top(run, scores, depth)
    return _write_eval(reranked, qrels, Path(out_dir), measures,
                       system=f"pairwise teacher (top-{depth} of the pointwise teacher)", iteration=None,
                       eval_set=eval_set)


def summarize(metric_paths: Sequence[str], out: str, out_tsv: str | None = None) -> pd.DataFrame:
    """The metrics files as one table (systems as rows, measures as columns) -> ``out`` (and ``out_tsv``)."""
    table = evaluate.summary([io.read_table(p, "metrics") for p in metric_paths])
    with io.atomic_path(out) as tmp:
        table.to_parquet(tmp, index=False)
    if out_tsv:
        with io.atomic_path(out_tsv) as tmp:
            table.to_csv(tmp, sep="\t", index=False, float_format="%.4f")
    _log(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return table


def summary(metrics: Sequence[str], out: str, out_tsv: str | None = None, teacher_scores: Sequence[str] = (),
            cache_out: str | None = None) -> pd.DataFrame:
    """One table: systems as rows, measures as columns.

    Args:
        teacher_scores: gathered pointwise/pairwise files whose cache hit rates to report
    """
    teacher_cache_report(teacher_scores, cache_out)
    return summarize(metrics, out, out_tsv)


@_with_inference
def pair_accuracy(student_run_path: str, pointwise_run_path: str, qrels_path: str, queries_path: str,
                  corpus_path: str, out: str, metrics_out: str, *, split: str, depth: int, delta: int,
                  model: str, family: str = "auto", max_length: int, batch_size: int,
                  eval_set: str, pointwise_system: str, pairwise_system: str,
                  precision: Precision = "fp32", prompt: str | None = None,
                  labels: tuple[str, str] | None = None, inference: Annotated[Inference | None, Opt(prefix="inference-")] = None) -> pd.DataFrame:
    """Pair accuracy of the student and both teachers on judged pairs.

    Pair accuracy (the paper's Table 5) of the student, the pointwise and the pairwise teacher
    on the same judged pairs: in the pointwise teacher's reranked top-``depth`` of the student's
    run, every (relevant, non-relevant) pair less than ``delta`` ranks apart, as pair sampling
    draws them. A system is right when it puts the relevant passage first (a tie counts 1/2):
    the student by its retrieval score, the pointwise teacher by its order, the pairwise
    teacher by (P(r > n) + 1 - P(n > r)) / 2 > 1/2.

    Args:
        model: the pairwise teacher: fitted teacher dir, local path, cached hub id or 'minilm'
    """
    from . import teachers
    from .teachers import fusion

    queries, qrels = _split_queries(queries_path, qrels_path, split, judged_only=True)
    relevant = set(map(tuple, qrels.loc[qrels["relevance"] > 0, ["query_id", "doc_id"]].to_numpy()))
    student = io.read_table(student_run_path, "run")
    student_score = dict(zip(zip(student["query_id"], student["doc_id"]), student["score"].astype(float)))
    ranked = io.read_table(pointwise_run_path, "run").sort_values(["query_id", "rank"])
    rows = []
    for qid, g in ranked.groupby("query_id", sort=True):
        docs = g["doc_id"].tolist()[:depth]
        rel = np.array([1 if (qid, d) in relevant else 0 for d in docs])
        for i, j in fusion.window_pairs(rel, delta):
            rows.append((qid, docs[i], docs[j], i + 1, j + 1))
    pairs_df = pd.DataFrame(rows, columns=["query_id", "doc_rel", "doc_non", "rank_rel", "rank_non"])
    corpus = _passages(corpus_path, pd.concat([pairs_df["doc_rel"], pairs_df["doc_non"]]).unique())
    scorer = teachers.load_pairwise(model, family, max_length=max_length,
                                    batch_size=batch_size, precision=precision, prompt=prompt,
                                    labels=labels)
    q = [queries[x] for x in pairs_df["query_id"]]
    a, b = [corpus[x] for x in pairs_df["doc_rel"]], [corpus[x] for x in pairs_df["doc_non"]]
    probs = scorer.prob(q + q, a + b, b + a, progress_label="pair-accuracy") if len(q) else np.zeros(0)
    n = len(q)
    pairs_df["p_pairwise"] = ((probs[:n] + 1.0 - probs[n:]) / 2.0).astype("float32")

    def right(x: np.ndarray) -> np.ndarray:
        return np.where(x > 0, 1.0, np.where(x < 0, 0.0, 0.5))

    s_rel = np.array([student_score.get(k, -np.inf) for k in zip(pairs_df["query_id"], pairs_df["doc_rel"])])
    s_non = np.array([student_score.get(k, -np.inf) for k in zip(pairs_df["query_id"], pairs_df["doc_non"])])
    with np.errstate(invalid="ignore"):
        pairs_df["student_right"] = right(np.nan_to_num(s_rel - s_non, nan=0.0))
    pairs_df["pointwise_right"] = right((pairs_df["rank_non"] - pairs_df["rank_rel"]).to_numpy())
    pairs_df["pairwise_right"] = right(pairs_df["p_pairwise"].to_numpy() - 0.5)
    with io.atomic_path(out) as tmp:
        pairs_df.to_parquet(tmp, index=False)
    systems = [("iteration 0", 0, "student_right"), (pointwise_system, None, "pointwise_right"),
               (pairwise_system, None, "pairwise_right")]
    if n:
        table = pd.DataFrame({"system": [s for s, _, _ in systems], "iteration": [i for _, i, _ in systems],
                              "eval_set": eval_set, "measure": "PairAcc",
                              "value": [float(pairs_df[c].mean()) for _, _, c in systems]})
    else:  # no accuracy to report: no rows, rather than a NaN the summary would print as a result
        warnings.warn(f"{qrels_path}: no judged pairs in split {split!r} (no query has a relevant and a "
                      f"non-relevant passage within {delta} ranks in the top-{depth}); pair accuracy is not "
                      f"reported", stacklevel=2)
        table = io.SCHEMAS["metrics"].empty_table().to_pandas()
    table = io.to_table(table.astype({"iteration": "Int32"}), "metrics").to_pandas()
    io.write_table(table, "metrics", metrics_out)
    _log(f"{n} judged pairs within {delta} ranks in the pointwise teacher's top-{depth}:\n" + table.to_string(index=False))
    return table


@_with_inference
def corpus_baselines(teacher: str, queries_path: str, qrels_path: str, out_dir: str, *, split: str, k: int,
                     measures: Sequence[str], eval_set: str, inference: Annotated[Inference | None, Opt(prefix="inference-")] = None) -> pd.DataFrame:
    """BM25, bi-encoder and fused teacher over the whole corpus.

    First-stage baselines over the whole corpus from a fusion teacher's features: BM25 alone,
    the base bi-encoder alone, and the teacher's own fused score; one eval directory each."""
    from .teachers import fusion

    feats = fusion.Features(teacher, device="cpu")
    queries, qrels = _split_queries(queries_path, qrels_path, split, judged_only=True)
    qids = sorted(queries)
    z = feats.query_scores([queries[q] for q in qids])
    systems = {"bm25": ("BM25 (full corpus)", {"bm25": 1.0}),
               "biencoder": ("bi-encoder (full corpus)", {fusion.BASE_DENSE: 1.0}),
               "teacher": (f"{feats.meta['family']} teacher (full corpus)", dict(zip(feats.names, feats.weights)))}
    tables = []
    for name, (system, weights) in systems.items():
        if any(f not in z for f in weights):
            continue
        s = sum(w * z[f] for f, w in weights.items())
        top = np.argsort(-s, axis=1, kind="stable")[:, :k]
        run = pd.DataFrame({"query_id": np.repeat(qids, top.shape[1]),
                            "doc_id": np.asarray(feats.doc_ids, dtype=object)[top.ravel()],
                            "rank": np.tile(np.arange(1, top.shape[1] + 1), len(qids)).astype("int32"),
                            "score": np.take_along_axis(s, top, axis=1).ravel().astype("float32")})
        tables.append(_write_eval(run, qrels, Path(out_dir) / name, measures, system=system, iteration=None,
                                  eval_set=eval_set))
    all_metrics = pd.concat(tables, ignore_index=True)
    io.write_table(all_metrics, "metrics", Path(out_dir) / "metrics.parquet")
    return all_metrics
