"""Which training settings should the embedded default's student use? (a benchmark, not a test)

Retrains one round of a finished run (``results/iter-0/checkpoint`` on ``results/iter-1``'s teacher
scores) once per setting, and scores every resulting student by exhaustive MaxSim over the whole
corpus (no PLAID approximation) on judged *training* queries that neither round of the run trained
on: settings are chosen on held-out training queries, never on the test split. Each setting is
compared with the first one by a paired t-test over those queries::

    python -m pairdistill.bench student --results results --set lr=3e-5 --set lr=1e-4 --set lr=2e-4

Every ``--set`` is a comma-separated list of ``train.*`` keys (``lr=1e-4,epochs=2``) over the run's
own settings (read from its ``config.yaml`` unless ``--config`` names another file).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from .. import data, evaluate, io, runtime, stages
from ..students import colbert

MEASURES = ("nDCG@10", "R@100")


def encode_corpus(model, texts: list[str], batch: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Every kept passage token's embedding (fp16) and the passage it belongs to."""
    from colbert.modeling.tokenization import DocTokenizer

    tok = DocTokenizer(model.colbert_config)
    embs, owner = [], []
    with torch.inference_mode():
        for start in range(0, len(texts), batch):
            ids, mask = tok.tensorize(texts[start:start + batch])
            D, D_mask = model.doc(ids, mask, keep_dims="return_mask")
            keep = D_mask.squeeze(-1).bool()
            for i in range(D.shape[0]):
                embs.append(D[i][keep[i]].half())
                owner.append(torch.full((int(keep[i].sum()),), start + i))
    return torch.cat(embs), torch.cat(owner)


def exhaustive_run(model, doc_ids: list[str], tokens: torch.Tensor, owner: torch.Tensor,
                   queries: dict[str, str], k: int = 100) -> pd.DataFrame:
    """Top-``k`` of every query by exact MaxSim (sum over query tokens of the best passage token)."""
    from colbert.modeling.tokenization import QueryTokenizer

    tok = QueryTokenizer(model.colbert_config)
    qids = sorted(queries)
    rows = []
    with torch.inference_mode():
        Q = model.query(*tok.tensorize([queries[q] for q in qids])).float()
        docs = tokens.float()
        for qid, q in zip(qids, Q):
            sim = q @ docs.T  # (query tokens, corpus tokens)
            best = torch.full((sim.shape[0], len(doc_ids)), -torch.inf).scatter_reduce(
                1, owner.expand(sim.shape[0], -1), sim, "amax")
            scores = best.sum(0)
            top = torch.topk(scores, min(k, len(doc_ids)))
            rows += [(qid, doc_ids[j], r + 1, float(s)) for r, (s, j) in
                     enumerate(zip(top.values.tolist(), top.indices.tolist()))]
    return pd.DataFrame(rows, columns=["query_id", "doc_id", "rank", "score"])


def heldout_queries(results: Path, split: str, n: int, seed: int) -> tuple[dict[str, str], pd.DataFrame]:
    """``n`` judged queries of ``split`` (seeded sample) that no round of the run trained on."""
    queries, qrels = stages._split_queries(str(results / "data/queries.parquet"), str(results / "data/qrels.parquet"),
                                           split, judged_only=True)
    seen = set()
    for part in sorted(results.glob("iter-*/pointwise.parquet")):
        seen |= set(io.read_table(part, "pointwise", columns=["query_id"])["query_id"])
    free = sorted(set(queries) - seen)
    if not free:
        raise ValueError(f"{results}: every judged {split!r} query was trained on; nothing is held out")
    pick = sorted(np.random.default_rng(seed).choice(free, size=min(n, len(free)), replace=False).tolist())
    return {q: queries[q] for q in pick}, qrels[qrels["query_id"].isin(pick)]


def _parse_set(text: str) -> dict:
    out = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        if not _:
            raise SystemExit(f"--set {text!r}: {item!r} is not key=value")
        parsed = yaml.safe_load(value)
        if isinstance(parsed, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                parsed = float(parsed)
            except ValueError:
                pass
        out[key.strip()] = parsed
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", default="results", help="a finished run's results directory")
    ap.add_argument("--config", default="config.yaml", help="the run's config (train.*, student.*, seed)")
    ap.add_argument("--set", action="append", default=[], dest="sets",
                    help="train.* overrides of one setting, e.g. lr=1e-4,epochs=2 (repeat; the first is the reference)")
    ap.add_argument("--heldout", type=int, default=300, help="held-out judged training queries")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="write the table here (TSV) as well")
    a = ap.parse_args(argv)
    runtime.set_threads(a.threads)
    results = Path(a.results)
    cfg = yaml.safe_load(Path(a.config).read_text())
    split, seed, st = cfg.get("train_split", "train"), cfg.get("seed", 13), cfg["student"]
    base_train = {k: v for k, v in cfg["train"].items()
                  if k in ("nway", "batch_size", "epochs", "max_steps", "lr", "warmup", "weight_decay",
                           "lambda_kd", "lambda_pair", "temperature", "use_labels", "in_batch_negatives",
                           "unlabelled_queries", "contrastive_negatives", "precision")}
    queries, qrels = heldout_queries(results, split, a.heldout, seed)
    corpus = io.read_table(results / "data/corpus.parquet", "corpus")
    texts = [data.passage_text(t, x) for t, x in corpus[["title", "text"]].itertuples(index=False)]
    doc_ids = corpus["doc_id"].tolist()
    print(f"{len(queries)} held-out judged {split!r} queries; {len(doc_ids)} passages", flush=True)

    def score(checkpoint: str) -> np.ndarray:
        model = colbert.load_student(checkpoint)
        model.eval()
        tokens, owner = encode_corpus(model, texts)
        run = exhaustive_run(model, doc_ids, tokens, owner, queries)
        _, values = evaluate.per_query(run, qrels, list(MEASURES))
        return np.stack(values)  # (measures, queries)

    rows, per_query = [], {}
    settings = [("iteration 0", None)] + [(s or "config", _parse_set(s)) for s in (a.sets or [""])]
    for name, override in settings:
        t0 = time.time()
        if override is None:
            values = score(str(results / "iter-0/checkpoint"))
        else:
            hyper = {**base_train, **override}
            with tempfile.TemporaryDirectory() as tmp:
                stages.train(str(results / "iter-0/checkpoint"), str(results / "data/corpus.parquet"),
                             str(results / "data/queries.parquet"), str(results / "data/qrels.parquet"),
                             str(results / "iter-1/pointwise.parquet"), str(results / "iter-1/pairwise.parquet"),
                             f"{tmp}/ckpt", f"{tmp}/loss.parquet", split=split, seed=seed,
                             query_maxlen=st["query_maxlen"], doc_maxlen=st["doc_maxlen"], **hyper)
                values = score(f"{tmp}/ckpt")
        per_query[name] = values
        rows.append({"setting": name, **{m: float(v.mean()) for m, v in zip(MEASURES, values)},
                     "seconds": round(time.time() - t0, 1)})
        print(json.dumps(rows[-1]), flush=True)
    from scipy.stats import ttest_rel

    ref = settings[1][0]
    for row in rows:
        if row["setting"] != ref:
            row[f"p vs {ref}"] = float(ttest_rel(per_query[row["setting"]][0], per_query[ref][0]).pvalue)
    show_table(rows, a.out)


def show_table(rows: list[dict], out: str | None) -> pd.DataFrame:
    """Print the benchmark's rows as a table, and write them as TSV to ``out`` when given."""
    table = pd.DataFrame(rows)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if out:
        table.to_csv(out, sep="\t", index=False)
    return table


if __name__ == "__main__":
    main()
