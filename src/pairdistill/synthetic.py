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
