"""Synthetic collections and tiny random teachers, for scale tests and the shard-memory benchmark.

Texts are random pseudo-words; what matters is the shape of the data (how many queries, passages,
retrieved rows per shard), not its meaning. Everything is seeded and written with the pipeline's
own schemas.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import io, shards

_LETTERS = np.array(list("abcdefghijklmnopqrstuvwxyz"))


def _vocabulary(rng: np.random.Generator, size: int = 2000) -> np.ndarray:
    lengths = rng.integers(3, 9, size=size)
    return np.array(["".join(rng.choice(_LETTERS, n)) for n in lengths])


def _texts(rng: np.random.Generator, vocab: np.ndarray, n: int, lo: int, hi: int) -> list[str]:
    lengths = rng.integers(lo, hi + 1, size=n)
    words = rng.choice(vocab, size=int(lengths.sum()))
    ends = np.cumsum(lengths)
    return [" ".join(words[e - k:e]) for e, k in zip(ends, lengths)]


def write_collection(out_dir: str | Path, *, n_queries: int, n_docs: int, seed: int = 0,
                     split: str = "train", doc_words: tuple[int, int] = (30, 60)) -> dict[str, Path]:
    """corpus/queries/qrels Parquet files: ``n_docs`` passages, ``n_queries`` queries of ``split``
    with one labelled positive each (every second query unlabelled). Returns their paths."""
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    vocab = _vocabulary(rng)
    doc_ids = [f"d{i}" for i in range(n_docs)]
    corpus = pd.DataFrame({"doc_id": doc_ids, "title": "", "text": _texts(rng, vocab, n_docs, *doc_words)})
    query_ids = [f"q{i}" for i in range(n_queries)]
    queries = pd.DataFrame({"split": split, "query_id": query_ids,
                            "text": _texts(rng, vocab, n_queries, 3, 8)})
    labelled = query_ids[::2]
    qrels = pd.DataFrame({"split": split, "query_id": labelled,
                          "doc_id": [doc_ids[i] for i in rng.integers(0, n_docs, size=len(labelled))],
                          "relevance": np.ones(len(labelled), dtype="int32")})
    paths = {name: out / f"{name}.parquet" for name in ("corpus", "queries", "qrels")}
    for name, frame in (("corpus", corpus), ("queries", queries), ("qrels", qrels)):
        io.write_table(frame, name, paths[name])
    return paths


def write_topk(queries_path: str | Path, n_docs: int, out: str | Path, *, k: int, shard: str | None,
               seed: int = 0) -> int:
    """A retrieval run (``run`` schema) of the queries in ``shard``: ``k`` random passages each, with
    decreasing scores. Returns the number of queries written."""
    ids = io.read_table(queries_path, "queries", columns=["query_id"])["query_id"]
    ids = ids[shards.in_shard(ids, shard)].tolist()
    rng = np.random.default_rng(seed)
    docs = np.stack([rng.choice(n_docs, size=k, replace=False) for _ in ids]) if ids else np.empty((0, k), int)
    run = pd.DataFrame({
        "query_id": np.repeat(ids, k),
        "doc_id": [f"d{i}" for i in docs.ravel()],
        "rank": np.tile(np.arange(1, k + 1, dtype="int32"), len(ids)),
        "score": np.tile(np.linspace(30.0, 10.0, k, dtype="float32"), len(ids)),
    })
    io.write_table(run, "run", out)
    return len(ids)


# the tiny random BERT of the tests and benchmarks: real architecture, milliseconds per batch
TINY_BERT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                 max_position_embeddings=512)


def tiny_classifier(out_dir: str | Path, tokenizer, seed: int = 0) -> str:
    """A tiny random BertForSequenceClassification with one label (the shape of a cross-encoder
    like ms-marco-MiniLM-L-6-v2, or of a BERT pairwise classifier), saved with ``tokenizer``."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, num_labels=1, **TINY_BERT)
    torch.manual_seed(seed)
    BertForSequenceClassification(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return str(out_dir)


def tiny_teachers(out_dir: str | Path, tokenizer_dir: str, seed: int = 0) -> dict[str, str]:
    """A tiny random cross-encoder and a tiny random BERT pairwise classifier with the tokenizer of
    ``tokenizer_dir``; returns {"pointwise": dir, "pairwise": dir}."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    return {kind: tiny_classifier(Path(out_dir) / f"tiny-{kind}", tokenizer, seed)
            for kind in ("pointwise", "pairwise")}


def _words_arrow(rng: np.random.Generator, vocab: "pa.Array", n: int, lo: int, hi: int) -> "pa.Array":
    """``n`` texts of ``lo``..``hi`` random words of ``vocab``, joined in Arrow (millions a minute)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    lengths = rng.integers(lo, hi + 1, size=n)
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    words = vocab.take(pa.array(rng.integers(0, len(vocab), size=int(offsets[-1]))))
    return pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets), words), " ")


def write_training_inputs(out_dir: str | Path, *, n_queries: int, n_docs: int, k: int = 100,
                          pairs_per_query: int = 50, labelled: float = 0.625, doc_words: tuple[int, int] = (45, 75),
                          split: str = "train", seed: int = 0, chunk_queries: int = 20_000) -> dict[str, Path]:
    """What the train job reads, at any size, streamed a chunk at a time in the pipeline's schemas:
    corpus (``n_docs`` passages of ``doc_words`` words), queries, qrels (one positive for a
    ``labelled`` share of the queries, in its list), pointwise (``k`` passages a query, teacher
    ranks 1..k) and pairwise (``pairs_per_query`` pairs of the list a query). Returns the paths."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    vocab = pa.array(_vocabulary(rng, 20_000).tolist(), type=pa.string())
    paths = {name: out / f"{name}.parquet" for name in ("corpus", "queries", "qrels", "pointwise", "pairwise")}
    writers = {name: pq.ParquetWriter(paths[name], io.schema(name)) for name in paths}

    def put(name: str, columns: dict) -> None:
        writers[name].write_table(pa.table(columns, schema=io.schema(name)), row_group_size=io.ROW_GROUP_ROWS)

    try:
        for lo in range(0, n_docs, io.ROW_GROUP_ROWS):
            n = min(io.ROW_GROUP_ROWS, n_docs - lo)
            put("corpus", {"doc_id": pa.array(np.char.add("d", np.arange(lo, lo + n).astype(str))),
                           "title": pa.array([""] * n, type=pa.string()),
                           "text": _words_arrow(rng, vocab, n, *doc_words)})
        for lo in range(0, n_queries, chunk_queries):
            n = min(chunk_queries, n_queries - lo)
            qids = np.char.add("q", np.arange(lo, lo + n).astype(str))
            put("queries", {"split": pa.array([split] * n), "query_id": pa.array(qids),
                            "text": _words_arrow(rng, vocab, n, 3, 8)})
            docs = rng.integers(0, n_docs, size=(n, k))
            dstr = np.char.add("d", docs.astype(str))
            lab = rng.random(n) < labelled
            where = rng.integers(0, k, size=n)
            put("qrels", {"split": pa.array([split] * int(lab.sum())), "query_id": pa.array(qids[lab]),
                          "doc_id": pa.array(dstr[lab, where[lab]]),
                          "relevance": pa.array(np.ones(int(lab.sum()), dtype=np.int32))})
            ranks = np.tile(np.arange(1, k + 1, dtype=np.int32), n)
            teacher = (np.sort(rng.normal(size=(n, k)).astype(np.float32), axis=1)[:, ::-1]).ravel()
            put("pointwise", {"query_id": pa.array(np.repeat(qids, k)), "doc_id": pa.array(dstr.ravel()),
                              "retriever_rank": pa.array(ranks),
                              "retriever_score": pa.array(np.linspace(30, 10, k * n, dtype=np.float32)),
                              "teacher_score": pa.array(teacher), "teacher_rank": pa.array(ranks),
                              "cached": pa.array(np.zeros(n * k, dtype=bool))})
            ra = rng.integers(0, k, size=(n, pairs_per_query))
            rb = (ra + rng.integers(1, k, size=(n, pairs_per_query))) % k
            rows = np.arange(n)[:, None]
            prob = rng.uniform(0.02, 0.98, size=n * pairs_per_query).astype(np.float32)
            put("pairwise", {"query_id": pa.array(np.repeat(qids, pairs_per_query)),
                             "doc_a": pa.array(dstr[rows, ra].ravel()), "doc_b": pa.array(dstr[rows, rb].ravel()),
                             "rank_a": pa.array((ra + 1).ravel().astype(np.int32)),
                             "rank_b": pa.array((rb + 1).ravel().astype(np.int32)),
                             "p_ab": pa.array(prob), "p_ba": pa.array(1 - prob), "prob": pa.array(prob),
                             "cached": pa.array(np.zeros(n * pairs_per_query, dtype=bool))})
    finally:
        for w in writers.values():
            w.close()
    return paths
