"""``python -m pairdistill <stage> ...``: the one entry point the Snakemake rules call.

Each subcommand maps its flags onto a function of :mod:`pairdistill.stages`. Input errors end the
process with one line (``error: <file>:<line>: <problem>``) and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from . import runtime
from .errors import InputError, SettingError


def _bool(v: str) -> bool:
    if v.lower() in ("1", "true", "yes", "on"):
        return True
    if v.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {v!r}")


def _opt_int(v: str) -> int | None:
    return None if v.lower() in ("none", "null", "all", "") else int(v)


def _micro_batch(v: str) -> int | None:
    n = _opt_int(v)
    return None if not n else n  # 0 (as the rule passes null): the whole batch


def _opt_str(v: str) -> str | None:
    return None if v.lower() in ("none", "null", "") else v


def _given(**kw) -> dict:
    """The settings a command was given (flags left out take their defaults further in)."""
    return {k: v for k, v in kw.items() if v is not None}


def _search_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ncells", type=int, required=True)
    p.add_argument("--centroid-score-threshold", type=float, required=True)
    p.add_argument("--ndocs", type=int, required=True)


def _search(a) -> dict:
    return {"ncells": a.ncells, "centroid_score_threshold": a.centroid_score_threshold, "ndocs": a.ndocs}


def _teacher_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="fitted teacher dir, local path, cached hub id or 'minilm'")
    p.add_argument("--family", default="auto")
    p.add_argument("--max-length", type=int, required=True)
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="fp32",
                   help="the teacher's dtype when scoring; auto: bf16 on a GPU that has it (fusion: always fp32)")
    p.add_argument("--prompt", default=None,
                   help="instruct-* families: the prompt template, with {query} and {passage} (pairwise: {query}, "
                        "{passage_a}, {passage_b}); default: the paper's")
    p.add_argument("--labels", nargs=2, default=None, metavar=("FIRST", "SECOND"),
                   help="instruct-* families: the label words, each one token (pointwise: relevant, not; "
                        "pairwise: passage A, passage B); default: Yes No / A B")


def _scoring_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache", nargs="*", default=(),
                   help="earlier iterations' files of this shard: scores of the same teacher are reused")
    p.add_argument("--part-rows", type=int, default=4096, help="rows per resumable part")


def _inspect_args(sub) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--results", default="results", help="the run's results directory")
    common.add_argument("--format", choices=("table", "tsv", "json"), default="table")
    p = sub.add_parser("inspect", help="what the teachers said and the students did (reads results/ only)")
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


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="pairdistill", description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    sub = ap.add_subparsers(dest="stage", required=True)

    p = sub.add_parser("prepare", help="corpus, queries and qrels (BEIR layout) -> Parquet")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--splits", nargs="+", required=True)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--format", choices=("beir", "msmarco"), default="beir")
    p.add_argument("--files", type=json.loads, default=None,
                   help='msmarco: JSON {"collection": ..., "queries": {split: ...}, "qrels": {split: ...}}')
    p.add_argument("--query-splits", type=json.loads, default=None,
                   help='derived splits, JSON {"adapt": {"from": "test", "share": 0.5}, "heldout": '
                        '{"from": "test", "rest_of": ["adapt"]}}; --splits may name them')
    p.add_argument("--seed", type=int, default=0, help="the derived splits' partition seed")

    p = sub.add_parser("prepare-lotte", help="a LoTTE topic (collection, questions, qas) -> Parquet")
    p.add_argument("--root", required=True, help="the LoTTE release: <root>/<topic>/<split>/")
    p.add_argument("--topic", required=True, help="writing, recreation, science, technology, lifestyle or pooled")
    p.add_argument("--split", required=True, help="dev or test")
    p.add_argument("--query-sets", nargs="+", required=True, choices=("search", "forum"))
    p.add_argument("--out-dir", required=True)

    p = sub.add_parser("prepare-qa-passages", help="DPR's passages (psgs_w100.tsv) -> corpus Parquet")
    p.add_argument("--passages", required=True)
    p.add_argument("--out", required=True)

    p = sub.add_parser("prepare-qa", help="DPR's questions with answers (*.qa.csv) -> queries and answers Parquet")
    p.add_argument("--questions", required=True)
    p.add_argument("--name", required=True, help="the question set's name: the split of its queries")
    p.add_argument("--out-dir", required=True)

    p = sub.add_parser("init-checkpoint", help="iteration-0 ColBERT checkpoint")
    p.add_argument("--base", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--dim", type=int, required=True)
    p.add_argument("--query-maxlen", type=int, required=True)
    p.add_argument("--doc-maxlen", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--projection", choices=("random", "pca"), default="random",
                   help="the new projection: colbert-ai's random initialisation, or PCA of passage tokens")
    p.add_argument("--corpus", default=None, help="pca: the corpus whose passages it samples")
    p.add_argument("--projection-passages", type=int, default=512, help="pca: passages sampled")
    p.add_argument("--arch", choices=("colbert", "dpr"), default="colbert",
                   help="the student: ColBERT, or a single-vector DPR dual encoder on --base (--dim and the "
                        "projection unused)")
    p.add_argument("--dpr-shared", type=_bool, default=None, help="dpr: one encoder for queries and passages")
    p.add_argument("--dpr-pooling", choices=("mean", "cls"), default=None)
    p.add_argument("--dpr-score", choices=("dot", "cosine"), default=None)
    p.add_argument("--dpr-scale", type=float, default=None, help="dpr: score = scale * similarity "
                                                                 "(default 20 with cosine, 1 with dot)")

    p = sub.add_parser("index", help="PLAID index of the corpus")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--corpus", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--nbits", type=int, required=True)
    p.add_argument("--doc-maxlen", type=int, required=True)
    p.add_argument("--kmeans-niters", type=int, default=4)
    p.add_argument("--reuse-sample-embeddings", type=_bool, default=True)
    p.add_argument("--num-partitions", type=_opt_int, default=None, help="k-means centroids (null: colbert's choice)")
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument("--query-maxlen", type=_opt_int, default=None,
                   help="query tokens when this collection is searched (kept in the index); default: the checkpoint's")
    p.add_argument("--drop-self-matches", type=_bool, default=False,
                   help="searches drop a hit whose id is the query's own (BEIR's ArguAna); kept in the index")
    p.add_argument("--dpr-index", choices=("flat", "ivf"), default=None,
                   help="a DPR checkpoint's faiss index: exact inner product (default) or IVF")
    p.add_argument("--dpr-nlist", type=int, default=None, help="ivf: k-means lists (at most one per passage)")
    p.add_argument("--dpr-nprobe", type=int, default=None, help="ivf: lists searched per query")

    p = sub.add_parser("retrieve", help="top-k of a split's queries")
    for name in ("--checkpoint", "--index", "--queries", "--qrels", "--out", "--split"):
        p.add_argument(name, required=True)
    p.add_argument("--k", type=int, required=True)
    p.add_argument("--max-queries", type=_opt_int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shard", default=None, help="e.g. 003-of-008: only the queries of that shard")
    _search_args(p)

    p = sub.add_parser("fit-teacher", help="fit the embedded default's pointwise or pairwise teacher")
    p.add_argument("--kind", choices=("pointwise", "pairwise"), required=True)
    for name in ("--negatives", "--corpus", "--queries", "--qrels", "--out", "--loss-out", "--split"):
        p.add_argument(name, required=True)
    p.add_argument("--negatives-per-query", type=int, required=True)
    p.add_argument("--init", default=runtime.MINILM)
    p.add_argument("--max-length", type=int, required=True)
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, required=True)
    p.add_argument("--warmup", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("fit-fusion", help="fit a fusion teacher (BM25 + bi-encoders, fitted weights)")
    p.add_argument("--kind", choices=("pointwise", "pairwise"), required=True)
    for name in ("--corpus", "--queries", "--qrels", "--out", "--loss-out", "--split"):
        p.add_argument(name, required=True)
    p.add_argument("--plain-out", help="pointwise: where the plain BM25 + bi-encoder fusion goes")
    p.add_argument("--pointwise-dir", help="pairwise: the fitted fusion pointwise teacher")
    p.add_argument("--init", default=runtime.MINILM)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--heldout", type=float, default=0.25)
    p.add_argument("--candidates", type=int, default=100)
    p.add_argument("--negatives", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--warmup", type=float, default=0.1)
    p.add_argument("--scale", type=float, default=20.0)
    p.add_argument("--depth", type=int, default=30)
    p.add_argument("--delta", type=int, default=10)
    p.add_argument("--pair-features", choices=("margin", "cross"), default="margin",
                   help="pairwise: the pair terms (pairdistill.teachers.fusion.pair_features)")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("pointwise", help="pointwise teacher scores of a top-k")
    for name in ("--topk", "--corpus", "--queries", "--out", "--split"):
        p.add_argument(name, required=True)
    p.add_argument("--qrels", required=True)
    p.add_argument("--add-positives", type=_bool, default=True,
                   help="also score the labelled positives the retriever missed")
    _teacher_args(p)
    _scoring_args(p)

    p = sub.add_parser("sample-pairs", help="pairs with |i-j| < delta on the pointwise-reranked list")
    p.add_argument("--pointwise", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--delta", type=int, required=True)
    p.add_argument("--pairs-per-query", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--iteration", type=int, default=None,
                   help="the distillation round, part of each query's seed (each round draws afresh)")

    p = sub.add_parser("pairwise", help="pairwise teacher P(a > b | q) of the sampled pairs")
    for name in ("--pairs", "--corpus", "--queries", "--out"):
        p.add_argument(name, required=True)
    p.add_argument("--both-orders", type=_bool, default=True)
    _teacher_args(p)
    _scoring_args(p)

    p = sub.add_parser("gather", help="one Parquet file from a stage's shard files")
    p.add_argument("--shards", nargs="+", required=True)
    p.add_argument("--schema", required=True, choices=("run", "pointwise", "pairs", "pairwise"))
    p.add_argument("--out", required=True)

    p = sub.add_parser("link", help="a finished artifact (file or directory) at another path too, hard-linked")
    p.add_argument("--src", required=True)
    p.add_argument("--out", required=True)

    p = sub.add_parser("train", help="checkpoint n -> n+1 with L_CL + lambda_KD L_KD + lambda_pair L_pair")
    for name in ("--checkpoint", "--corpus", "--queries", "--qrels", "--pointwise", "--pairwise", "--out",
                 "--loss-out", "--split"):
        p.add_argument(name, required=True)
    p.add_argument("--nway", type=int, required=True)
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max-steps", type=_opt_int, default=None)
    p.add_argument("--lr", type=float, required=True)
    p.add_argument("--warmup", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--lambda-kd", type=float, default=1.0)
    p.add_argument("--lambda-pair", type=float, default=3.0)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--use-labels", type=_bool, default=True)
    p.add_argument("--in-batch-negatives", type=_bool, default=False)
    p.add_argument("--unlabelled-queries", type=_bool, default=False,
                   help="with --use-labels: also train on queries without a labelled positive "
                        "(KD and pairwise terms only)")
    p.add_argument("--query-maxlen", type=int, required=True)
    p.add_argument("--doc-maxlen", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--state-dir", default=None,
                   help="keep a resumable training state here (outside the outputs); default: none")
    p.add_argument("--save-every", type=int, default=50, help="optimizer steps between two states")
    p.add_argument("--micro-batch", type=_micro_batch, default=None,
                   help="queries per forward/backward (gradient cache); default (or 0): the whole batch at once")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                   help="the encoders' precision (accelerate mixed precision); auto: bf16 on a GPU that has it")
    p.add_argument("--grad-checkpointing", type=_bool, default=False,
                   help="recompute the encoder's activations in the backward pass (less memory, ~30%% slower)")
    p.add_argument("--contrastive-negatives", choices=("teacher", "in_batch", "mined"), default="teacher",
                   help="L_CL's negatives: the query's teacher-ranked list, other queries' passages, or mined")
    p.add_argument("--mined-negatives", type=_opt_str, default=None,
                   help="with --contrastive-negatives mined: Parquet (query_id, doc_id) or DRAGON JSON lines")
    p.add_argument("--mined-per-query", type=int, default=8, help="mined negatives per labelled query")
    p.add_argument("--processes", type=int, default=1,
                   help="data-parallel processes, one per GPU (launched by this command); 1: this process")
    p.add_argument("--arch", choices=("colbert", "dpr"), default=None,
                   help="the student kind the checkpoint must be (default: whichever it is)")

    p = sub.add_parser("evaluate", help="search a split's queries; run + metrics + TREC file")
    for name in ("--checkpoint", "--index", "--queries", "--qrels", "--out-dir", "--split"):
        p.add_argument(name, required=True)
    p.add_argument("--k", type=int, required=True)
    p.add_argument("--measures", nargs="+", required=True)
    p.add_argument("--iteration", type=int, required=True)
    p.add_argument("--eval-set", required=True, help="name of the evaluation set in the metrics, e.g. msmarco/dev")
    _search_args(p)

    p = sub.add_parser("evaluate-qa", help="search a QA set's questions; run + Recall@k by answer match")
    for name in ("--checkpoint", "--index", "--corpus", "--queries", "--answers", "--out-dir"):
        p.add_argument(name, required=True)
    p.add_argument("--k", type=int, nargs="+", required=True, help="the cutoffs of Recall@k; searches max(k)")
    p.add_argument("--match", choices=("string", "squad"), default="string",
                   help="answer normalisation: DPR's string match, or SQuAD's (no punctuation, no articles)")
    p.add_argument("--iteration", type=int, required=True)
    p.add_argument("--eval-set", required=True, help="name of the evaluation set in the metrics, e.g. qa/nq")
    _search_args(p)

    for kind in ("pointwise", "pairwise"):
        p = sub.add_parser(f"rerank-{kind}", help=f"the {kind} teacher as a reranker of a run's top")
        for name in ("--run", "--corpus", "--queries", "--qrels", "--out-dir", "--split"):
            p.add_argument(name, required=True)
        p.add_argument("--depth", type=int, required=True)
        p.add_argument("--measures", nargs="+", required=True)
        p.add_argument("--eval-set", required=True)
        if kind == "pointwise":
            p.add_argument("--system", default=None, help="the system's name in the metrics")
        _teacher_args(p)

    p = sub.add_parser("pair-accuracy", help="pair accuracy of the student and both teachers on judged pairs")
    for name in ("--student-run", "--pointwise-run", "--queries", "--qrels", "--corpus", "--out", "--metrics-out",
                 "--split", "--eval-set", "--pointwise-system", "--pairwise-system"):
        p.add_argument(name, required=True)
    p.add_argument("--depth", type=int, required=True)
    p.add_argument("--delta", type=int, required=True)
    _teacher_args(p)

    p = sub.add_parser("rebase-fusion", help="a fitted fusion teacher re-based on another corpus (BM25 statistics "
                                            "and corpus embeddings recomputed, fitted weights kept)")
    p.add_argument("--teacher", required=True, help="the fitted fusion teacher directory (fusion or fusion-pairwise)")
    p.add_argument("--corpus", required=True, help="the new corpus (corpus.parquet)")
    p.add_argument("--out", required=True)
    p.add_argument("--reuse", default=None, help="a teacher re-based on this corpus already (the pointwise one): "
                                                 "the corpus embeddings of the bi-encoders both share are taken from it")

    p = sub.add_parser("corpus-baselines", help="BM25, bi-encoder and fused teacher over the whole corpus")
    for name in ("--teacher", "--queries", "--qrels", "--out-dir", "--split", "--eval-set"):
        p.add_argument(name, required=True)
    p.add_argument("--k", type=int, required=True)
    p.add_argument("--measures", nargs="+", required=True)

    p = sub.add_parser("selfcheck", help="can this machine run the paper? a training step, teacher scoring and "
                                         "colbert-ai indexing on random weights and synthetic data -> JSON")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    p.add_argument("--small", action="store_true", help="tiny shapes: the code paths in about a minute on a CPU")
    p.add_argument("--out", default=None, help="write the figures here (JSON)")
    p.add_argument("--parts", nargs="+", choices=("train", "teachers", "colbert"),
                   default=["train", "teachers", "colbert"])

    p = sub.add_parser("benchmarks", help="per-stage wall time and peak memory from benchmark files")
    p.add_argument("--dir", default="benchmarks")

    _inspect_args(sub)

    p = sub.add_parser("figures", help="the report's figures (PNG) from a run's artifacts")
    for name in ("--summary", "--cache", "--out-dir"):
        p.add_argument(name, required=True)
    for name in ("--losses", "--pointwise", "--pairwise"):
        p.add_argument(name, nargs="*", default=[], help="one file per round")
    p.add_argument("--ablations", default=None, help="the ablation table, when it was built")
    p.add_argument("--benchmarks", default="benchmarks", help="Snakemake's benchmark files")

    p = sub.add_parser("ablation-figure", help="every measure per round for the full method and each ablation variant")
    for name in ("--summary", "--ablations", "--out"):
        p.add_argument(name, required=True)

    p = sub.add_parser("summary", help="one table: systems as rows, measures as columns")
    p.add_argument("--metrics", nargs="+", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--out-tsv", default=None)
    p.add_argument("--teacher-scores", nargs="*", default=(),
                   help="gathered pointwise/pairwise files whose cache hit rates to report")
    p.add_argument("--cache-out", default=None)

    p = sub.add_parser("ablation-table", help="each ablation variant against the full method: delta, paired t-test")
    p.add_argument("--run", nargs=4, action="append", default=[], metavar=("VARIANT", "ITERATION", "SPLIT", "RUN"),
                   help="an evaluation run (run.parquet) of a variant ('full': the full method); repeated")
    p.add_argument("--measures", nargs="+", action="append", required=True, metavar=("SPLIT", "MEASURE"),
                   help="a split and its measures; repeated for each split")
    p.add_argument("--reference", nargs=3, action="append", default=[], metavar=("NAME", "SPLIT", "RUN"),
                   help="another system's run compared with the full method's last iteration; repeated")
    p.add_argument("--qrels", required=True)
    p.add_argument("--dataset", required=True, help="names the evaluation sets: <dataset>/<split>")
    p.add_argument("--out", required=True)
    p.add_argument("--out-tsv", default=None)
    return ap


def run(a: argparse.Namespace):
    from . import stages

    s = a.stage
    if s == "prepare":
        return stages.prepare(a.data_dir, a.dataset, a.splits, a.out_dir, format=a.format, files=a.files,
                              query_splits=a.query_splits, seed=a.seed)
    if s == "prepare-lotte":
        return stages.prepare_lotte(a.root, a.topic, a.split, a.query_sets, a.out_dir)
    if s == "prepare-qa-passages":
        return stages.prepare_qa_passages(a.passages, a.out)
    if s == "prepare-qa":
        return stages.prepare_qa_questions(a.questions, a.name, a.out_dir)
    if s == "init-checkpoint":
        return stages.init_checkpoint(a.base, a.out, dim=a.dim, query_maxlen=a.query_maxlen,
                                      doc_maxlen=a.doc_maxlen, seed=a.seed, projection=a.projection,
                                      corpus_path=a.corpus, projection_passages=a.projection_passages,
                                      arch=a.arch, dpr=_given(shared=a.dpr_shared, pooling=a.dpr_pooling,
                                                              score=a.dpr_score, scale=a.dpr_scale))
    if s == "index":
        return stages.index(a.checkpoint, a.corpus, a.out, nbits=a.nbits, doc_maxlen=a.doc_maxlen,
                            kmeans_niters=a.kmeans_niters, reuse_sample_embeddings=a.reuse_sample_embeddings,
                            seed=a.seed, num_partitions=a.num_partitions, query_maxlen=a.query_maxlen,
                            drop_self_matches=a.drop_self_matches,
                            dpr_index=_given(type=a.dpr_index, nlist=a.dpr_nlist, nprobe=a.dpr_nprobe))
    if s == "retrieve":
        return stages.retrieve(a.checkpoint, a.index, a.queries, a.qrels, a.out, split=a.split, k=a.k,
                               max_queries=a.max_queries, seed=a.seed, search=_search(a), shard=a.shard)
    if s == "fit-teacher":
        return stages.fit_teacher(a.kind, a.negatives, a.corpus, a.queries, a.qrels, a.out, a.loss_out,
                                  split=a.split, negatives_per_query=a.negatives_per_query, init=a.init,
                                  max_length=a.max_length, batch_size=a.batch_size, epochs=a.epochs, lr=a.lr,
                                  warmup=a.warmup, seed=a.seed)
    if s == "fit-fusion":
        if a.kind == "pointwise" and not a.plain_out:
            raise SystemExit("error: fit-fusion --kind pointwise needs --plain-out")
        if a.kind == "pairwise" and not a.pointwise_dir:
            raise SystemExit("error: fit-fusion --kind pairwise needs --pointwise-dir")
        return stages.fit_fusion_teacher(a.kind, a.corpus, a.queries, a.qrels, a.out, a.loss_out, split=a.split,
                                         seed=a.seed, plain_out=a.plain_out, pointwise_dir=a.pointwise_dir,
                                         init=a.init, max_length=a.max_length, heldout=a.heldout,
                                         candidates=a.candidates, negatives=a.negatives, batch_size=a.batch_size,
                                         epochs=a.epochs, lr=a.lr, warmup=a.warmup, scale=a.scale, depth=a.depth,
                                         delta=a.delta, pair_features=a.pair_features)
    if s == "pointwise":
        return stages.pointwise(a.topk, a.corpus, a.queries, a.qrels, a.out, split=a.split, model=a.model,
                                family=a.family, max_length=a.max_length, batch_size=a.batch_size,
                                add_positives=a.add_positives, cache=a.cache, part_rows=a.part_rows,
                                precision=a.precision, prompt=a.prompt, labels=a.labels)
    if s == "sample-pairs":
        return stages.sample_pairs(a.pointwise, a.out, delta=a.delta, pairs_per_query=a.pairs_per_query,
                                   seed=a.seed, iteration=a.iteration)
    if s == "pairwise":
        return stages.pairwise(a.pairs, a.corpus, a.queries, a.out, model=a.model, family=a.family,
                               max_length=a.max_length, batch_size=a.batch_size, both_orders=a.both_orders,
                               cache=a.cache, part_rows=a.part_rows, precision=a.precision, prompt=a.prompt,
                               labels=a.labels)
    if s == "gather":
        return stages.gather(a.shards, a.schema, a.out)
    if s == "link":
        from . import io

        return io.link_artifact(a.src, a.out)
    if s == "train":
        return stages.train(a.checkpoint, a.corpus, a.queries, a.qrels, a.pointwise, a.pairwise, a.out,
                            a.loss_out, split=a.split, nway=a.nway, use_labels=a.use_labels, seed=a.seed,
                            query_maxlen=a.query_maxlen, doc_maxlen=a.doc_maxlen, batch_size=a.batch_size,
                            epochs=a.epochs, max_steps=a.max_steps, lr=a.lr, warmup=a.warmup,
                            weight_decay=a.weight_decay, lambda_kd=a.lambda_kd, lambda_pair=a.lambda_pair,
                            temperature=a.temperature, in_batch_negatives=a.in_batch_negatives,
                            unlabelled_queries=a.unlabelled_queries, state_dir=a.state_dir,
                            save_every=a.save_every, micro_batch=a.micro_batch, precision=a.precision,
                            grad_checkpointing=a.grad_checkpointing,
                            contrastive_negatives=a.contrastive_negatives, mined_negatives=a.mined_negatives,
                            mined_per_query=a.mined_per_query, arch=a.arch)
    if s == "evaluate":
        return stages.evaluate_retriever(a.checkpoint, a.index, a.queries, a.qrels, a.out_dir, split=a.split,
                                         k=a.k, measures=a.measures, iteration=a.iteration, search=_search(a),
                                         eval_set=a.eval_set)
    if s == "evaluate-qa":
        return stages.evaluate_qa(a.checkpoint, a.index, a.corpus, a.queries, a.answers, a.out_dir, ks=a.k,
                                  match=a.match, iteration=a.iteration, search=_search(a), eval_set=a.eval_set)
    if s in ("rerank-pointwise", "rerank-pairwise"):
        fn = stages.rerank_pointwise if s == "rerank-pointwise" else stages.rerank_pairwise
        extra = {"system": a.system} if s == "rerank-pointwise" and a.system else {}
        return fn(a.run, a.corpus, a.queries, a.qrels, a.out_dir, split=a.split, depth=a.depth,
                  measures=a.measures, model=a.model, family=a.family, max_length=a.max_length,
                  batch_size=a.batch_size, eval_set=a.eval_set, precision=a.precision, prompt=a.prompt,
                  labels=a.labels, **extra)
    if s == "pair-accuracy":
        return stages.pair_accuracy(a.student_run, a.pointwise_run, a.qrels, a.queries, a.corpus, a.out, a.metrics_out,
                                    split=a.split, depth=a.depth, delta=a.delta, pairwise_model=a.model,
                                    pairwise_family=a.family, pairwise_max_length=a.max_length,
                                    batch_size=a.batch_size, eval_set=a.eval_set,
                                    pointwise_system=a.pointwise_system, pairwise_system=a.pairwise_system,
                                    pairwise_precision=a.precision, pairwise_prompt=a.prompt,
                                    pairwise_labels=a.labels)
    if s == "rebase-fusion":
        return stages.rebase_fusion_teacher(a.teacher, a.corpus, a.out, a.reuse)
    if s == "corpus-baselines":
        return stages.corpus_baselines(a.teacher, a.queries, a.qrels, a.out_dir, split=a.split, k=a.k,
                                       measures=a.measures, eval_set=a.eval_set)
    if s == "summary":
        stages.teacher_cache_report(a.teacher_scores, a.cache_out)
        return stages.summarize(a.metrics, a.out, a.out_tsv)
    if s == "ablation-table":
        from . import ablations

        return ablations.write(a.run, a.qrels, {m[0]: m[1:] for m in a.measures}, a.dataset, a.out, a.out_tsv,
                               references=a.reference)
    if s == "selfcheck":
        from . import selfcheck

        return selfcheck.run(a.device, small=a.small, out=a.out, parts=tuple(a.parts))
    if s == "figures":
        from . import figures

        return figures.draw_all(summary=a.summary, losses_=a.losses, pointwise=a.pointwise, pairwise=a.pairwise,
                                cache=a.cache, benchmarks_dir=a.benchmarks, out_dir=a.out_dir, ablations=a.ablations)
    if s == "ablation-figure":
        from . import figures

        return figures.metrics(a.summary, a.out, a.ablations)
    if s == "benchmarks":
        from .bench.benchmark_files import report

        return print(report(a.dir))
    raise AssertionError(s)


# Stages that put a model on the GPU when there is one. They claim their GPU before anything
# else touches CUDA (colbert-ai would otherwise run on the first visible one).
GPU_STAGES = {"init-checkpoint", "index", "retrieve", "fit-teacher", "pointwise", "pairwise", "train",
              "evaluate", "evaluate-qa", "rerank-pointwise", "rerank-pairwise"}


def launch(argv: list[str], processes: int) -> int:
    """Run this command as ``processes`` data-parallel processes (training on several GPUs): claim
    that many GPUs, then start one process per GPU with torch.distributed.run (what ``accelerate
    launch --multi_gpu`` runs); accelerate sets up their process group. Without GPUs the processes
    share the CPU (gloo), which is how the tests run it."""
    import os
    import subprocess

    import torch

    if torch.cuda.is_available():
        visible = len(runtime.visible_gpu_ids())
        if visible < processes:
            raise SettingError(f"resources.train.gpu: {processes} processes need {processes} GPUs; {visible} visible")
        runtime.claim_gpus_for_launch(processes)
    else:
        print(f"no GPU visible: the {processes} processes share the CPU (gloo)", flush=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
           "-m", "pairdistill", *argv]
    print(f"launching: {' '.join(cmd)}", flush=True)
    # the launcher's death (SIGKILL included) takes torch.distributed.run with it, whose death takes the processes
    return subprocess.run(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                          preexec_fn=lambda: runtime.die_with_parent(15)).returncode


def main(argv: list[str] | None = None) -> int:
    import os

    argv = sys.argv[1:] if argv is None else list(argv)
    a = build_parser().parse_args(argv)
    if getattr(a, "processes", 1) > 1 and "LOCAL_RANK" not in os.environ:
        try:
            code = launch(argv, a.processes)
        except SettingError as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            return 2
        return code
    if a.stage == "inspect":  # output for a person or a script: no start and end lines
        from . import inspection

        return inspection.main(a)
    if "LOCAL_RANK" in os.environ:  # one of a data-parallel job's processes
        runtime.die_with_parent()
    runtime.set_threads(a.threads)
    if a.stage in GPU_STAGES:
        runtime.device()
    print(f"pairdistill {a.stage}: {json.dumps(vars(a), default=str)}", flush=True)
    start = time.monotonic()
    try:
        run(a)
    except (InputError, SettingError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    print(f"pairdistill {a.stage}: done in {time.monotonic() - start:.1f}s", flush=True)
    return 0
