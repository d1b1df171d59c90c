"""Which projection should a ColBERT built on a sentence encoder start from? (a benchmark, not a test)

For one base encoder, compares the iteration-0 projections of ``student.projection``: colbert-ai's
random initialisation and the PCA of passage token embeddings, by exhaustive MaxSim over the whole corpus (no PLAID approximation), on the judged
queries of a split. Choose on a training split, never on the test split::

    python -m pairdistill.bench projection --corpus results/data/corpus.parquet \\
        --queries results/data/queries.parquet --qrels results/data/qrels.parquet --split train

The embedded default's choice (pca) was made this way on 300 SciFact training queries: nDCG@10
0.647 (pca, fitted on 50,000 sampled passage tokens) against 0.608 (random).
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np
import pandas as pd
import torch

from .. import data, evaluate, io, runtime
from ..students import colbert


def _hidden_states(model, texts, tokenizer, batch: int = 64, queries: bool = False):
    """Pre-projection token states as ColBERT sees them: (tokens, hidden) and each text's count."""
    out, counts = [], []
    with torch.inference_mode():
        for start in range(0, len(texts), batch):
            ids, mask = tokenizer.tensorize(list(texts[start:start + batch]))
            h = model.bert(ids, attention_mask=mask)[0]
            keep = mask.bool() if queries else torch.tensor(model.mask(ids, skiplist=model.skiplist), dtype=torch.bool)
            for i in range(h.shape[0]):
                out.append(h[i][keep[i]].to(torch.float16 if not queries else torch.float32))
                counts.append(int(keep[i].sum()))
    return out, counts


def compare(base: str, corpus: pd.DataFrame, queries: dict[str, str], qrels: pd.DataFrame, *, dim: int = 128,
            query_maxlen: int = 32, doc_maxlen: int = 128, pca_passages: int = 512, seed: int = 13,
            measures=("nDCG@10", "R@100")) -> pd.DataFrame:
    from colbert.modeling.tokenization import DocTokenizer, QueryTokenizer

    texts = [data.passage_text(t, x) for t, x in corpus[["title", "text"]].itertuples(index=False)]
    rng = np.random.default_rng(seed)
    sample = [texts[i] for i in np.sort(rng.choice(len(texts), size=min(pca_passages, len(texts)), replace=False))]
    with tempfile.TemporaryDirectory() as tmp:
        colbert.init_checkpoint(base, f"{tmp}/random", dim=dim, query_maxlen=query_maxlen, doc_maxlen=doc_maxlen,
                                seed=seed)
        model = colbert.load_student(f"{tmp}/random")
    model.eval()
    projections = {"random": model.linear.weight.detach().float(),
                   "pca": colbert.pca_projection(model, sample, dim)}
    docs, counts = _hidden_states(model, texts, DocTokenizer(model.colbert_config))
    qids = sorted(queries)
    q_states, _ = _hidden_states(model, [queries[q] for q in qids], QueryTokenizer(model.colbert_config),
                                 queries=True)
    doc_of_token = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    all_docs = torch.cat(docs).float()
    rows = []
    for name, w in projections.items():
        d = torch.nn.functional.normalize(all_docs @ w.T, dim=-1)
        run = []
        for qid, q in zip(qids, q_states):
            sim = torch.nn.functional.normalize(q @ w.T, dim=-1) @ d.T  # (query tokens, corpus tokens)
            best = torch.full((sim.shape[0], len(counts)), -torch.inf).scatter_reduce(
                1, doc_of_token.expand(sim.shape[0], -1), sim, "amax")
            scores = best.sum(0)
            top = torch.topk(scores, min(100, len(counts))).indices.tolist()
            run += [(qid, corpus["doc_id"].iloc[j], r + 1, float(scores[j])) for r, j in enumerate(top)]
        run = pd.DataFrame(run, columns=["query_id", "doc_id", "rank", "score"])
        m = evaluate.metrics(run, qrels, list(measures), system=name, iteration=None, eval_set="")
        rows.append({"projection": name, **dict(zip(m["measure"], m["value"]))})
        print(rows[-1], flush=True)
    return pd.DataFrame(rows)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", default=runtime.MINILM)
    for name in ("--corpus", "--queries", "--qrels"):
        ap.add_argument(name, required=True)
    ap.add_argument("--split", default="train")
    ap.add_argument("--max-queries", type=int, default=300, help="the first N judged queries (sorted by id)")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    runtime.set_threads(a.threads)
    queries = io.read_table(a.queries, "queries")
    qrels = io.read_table(a.qrels, "qrels")
    qrels = qrels[qrels["split"] == a.split]
    judged = sorted(set(qrels["query_id"]))[: a.max_queries]
    queries = queries[(queries["split"] == a.split) & queries["query_id"].isin(judged)]
    table = compare(a.base, io.read_table(a.corpus, "corpus"), dict(zip(queries["query_id"], queries["text"])),
                    qrels[qrels["query_id"].isin(judged)])
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))


if __name__ == "__main__":
    main()
