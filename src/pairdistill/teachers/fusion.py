"""Fusion teachers: BM25 and bi-encoders fused with weights fitted on held-out training queries.

No MS MARCO reranker can be installed offline, and a cross-encoder fitted from MiniLM in a few
hundred CPU steps ranks worse than the student it should teach. A fusion of cheap, strong
first-stage signals does not have that problem (Hofstätter et al. 2020 distil from an ensemble
of teachers for the same reason), and it scores from stored corpus statistics and embeddings,
so teacher scoring costs a dot product per passage instead of a transformer forward.

A fusion teacher is a model directory (``pairdistill_teacher.json`` family ``fusion`` or
``fusion-pairwise``) holding, per feature:

=================  =============================================================================
``bm25``           Okapi BM25 (k1 1.5, b 0.75, Lucene idf) on lower-cased word tokens without
                   English stop words; document frequencies and lengths of the whole corpus
``dense:<name>``   cosine of mean-pooled, L2-normalised bi-encoder embeddings (sentence-
                   transformers' all-MiniLM-L6-v2 recipe); the corpus embeddings are stored
=================  =============================================================================

Each feature is z-normalised per query over the whole corpus (the query's mean and standard
deviation over every passage), so features are comparable across queries and a passage's score
does not depend on which other passages are scored with it. The pointwise score is
``s(q, d) = sum_k w_k z_k(q, d)``, with ``w`` fitted by a listwise softmax cross-entropy (the
labelled positive against the candidate list) on training queries held out from any fine-tuning:
its softmax is then a calibrated distribution over passages, which is what L_KD distils.

The pairwise teacher starts from the pointwise one: ``P(a > b) = sigmoid(alpha (s_a - s_b) +
sum_k beta_k (z_k(a) - z_k(b)))``, fitted by binary cross-entropy on judged pairs within the
sampling window of the held-out queries' candidate lists. With ``beta = 0`` it is the pointwise
teacher's margin; ``beta`` lets it weigh the signals differently for close pairs, which is what
pair sampling asks of it.
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from .. import io, runtime
from ..progress import Progress

POINTWISE_FAMILY, PAIRWISE_FAMILY = "fusion", "fusion-pairwise"
META_FILE = "pairdistill_teacher.json"
BM25_K1, BM25_B = 1.5, 0.75

# A common English stop-word list (the words of NLTK's list without apostrophe forms).
STOP_WORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being below
between both but by can did do does doing don down during each few for from further had has have
having he her here hers herself him himself his how i if in into is it its itself just me more most
my myself no nor not now of off on once only or other our ours ourselves out over own same she
should so some such than that the their theirs them themselves then there these they this those
through to too under until up very was we were what when where which while who whom why will with
you your yours yourself yourselves
""".split())
_WORD = re.compile(r"\w+", re.UNICODE)


def bm25_tokens(text: str) -> list[str]:
    """Lower-cased word tokens without stop words."""
    return [t for t in _WORD.findall(text.lower()) if t not in STOP_WORDS]


# --------------------------------------------------------------------------------------------
# BM25 over a fixed corpus
# --------------------------------------------------------------------------------------------

class BM25:
    """Okapi BM25 over a corpus, as a sparse passage x term matrix of per-term scores.

    ``scores(query)`` is one float per passage of the corpus (its order), the sum of the
    weights of the query's terms (a repeated query term counts once per occurrence, as Lucene).
    ``score_text(query, text)`` scores a passage outside the corpus with the corpus' statistics."""

    def __init__(self, vocab: dict[str, int], matrix, idf: np.ndarray, avgdl: float,
                 k1: float = BM25_K1, b: float = BM25_B):
        self.vocab, self.idf, self.avgdl, self.k1, self.b = vocab, idf, avgdl, k1, b
        self.matrix = matrix.tocsc()  # term columns: a query reads only its terms' columns

    @classmethod
    def build(cls, texts: Sequence[str], k1: float = BM25_K1, b: float = BM25_B) -> "BM25":
        from scipy import sparse

        vocab: dict[str, int] = {}
        rows, cols, counts, lengths = [], [], [], np.zeros(len(texts), dtype=np.float64)
        for i, text in enumerate(texts):
            tokens = bm25_tokens(text)
            lengths[i] = len(tokens)
            tf: dict[int, int] = {}
            for t in tokens:
                j = vocab.setdefault(t, len(vocab))
                tf[j] = tf.get(j, 0) + 1
            rows.extend([i] * len(tf))
            cols.extend(tf.keys())
            counts.extend(tf.values())
        n = len(texts)
        tf = np.asarray(counts, dtype=np.float64)
        rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
        df = np.bincount(cols, minlength=len(vocab)).astype(np.float64)
        idf = np.log1p((n - df + 0.5) / (df + 0.5))  # Lucene's, never negative
        avgdl = float(lengths.mean()) if n else 1.0
        norm = k1 * (1 - b + b * lengths[rows] / max(avgdl, 1e-9))
        weights = idf[cols] * tf * (k1 + 1) / (tf + norm)
        matrix = sparse.csr_matrix((weights.astype(np.float32), (rows, cols)), shape=(n, len(vocab)))
        return cls(vocab, matrix, idf.astype(np.float32), avgdl, k1, b)

    def _query_columns(self, query: str) -> list[int]:
        return [self.vocab[t] for t in bm25_tokens(query) if t in self.vocab]

    def scores(self, query: str) -> np.ndarray:
        cols = self._query_columns(query)
        if not cols:
            return np.zeros(self.matrix.shape[0], dtype=np.float32)
        return np.asarray(self.matrix[:, cols].sum(axis=1), dtype=np.float32).ravel()

    def score_text(self, query: str, text: str) -> float:
        tokens = bm25_tokens(text)
        tf: dict[str, int] = {}
        for t in tokens:
            tf[t] = tf.get(t, 0) + 1
        norm = self.k1 * (1 - self.b + self.b * len(tokens) / max(self.avgdl, 1e-9))
        total = 0.0
        for t in bm25_tokens(query):
            if t in self.vocab and t in tf:
                total += float(self.idf[self.vocab[t]]) * tf[t] * (self.k1 + 1) / (tf[t] + norm)
        return total

    def save(self, directory: Path) -> None:
        from scipy import sparse

        sparse.save_npz(directory / "bm25.npz", self.matrix.tocsr())
        (directory / "bm25_vocab.json").write_text(json.dumps(self.vocab))
        np.save(directory / "bm25_idf.npy", self.idf)
        (directory / "bm25_stats.json").write_text(json.dumps({"avgdl": self.avgdl, "k1": self.k1, "b": self.b}))

    @classmethod
    def load(cls, directory: Path) -> "BM25":
        from scipy import sparse

        stats = json.loads((directory / "bm25_stats.json").read_text())
        return cls(json.loads((directory / "bm25_vocab.json").read_text()), sparse.load_npz(directory / "bm25.npz"),
                   np.load(directory / "bm25_idf.npy"), stats["avgdl"], stats["k1"], stats["b"])


# --------------------------------------------------------------------------------------------
# Bi-encoders: mean pooling + L2 normalisation (sentence-transformers' MiniLM recipe)
# --------------------------------------------------------------------------------------------

class BiEncoder:
    """A transformer encoder with mean pooling and L2 normalisation (one vector per text).

    Under non-default inference.* settings (:mod:`pairdistill.inference.pipeline`, read when it is
    made) :meth:`encode` runs the exported encoder, built at its first call (openvino int8:
    calibrated on that call's first texts); ``fast=False`` (fine-tuning) keeps the torch model."""

    def __init__(self, path: str, max_length: int, device: str = "auto", *, fast: bool = True):
        from transformers import AutoModel, AutoTokenizer

        from ..inference import pipeline

        self.path = path
        self.device = runtime.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        # features are padded per length-sorted batch on purpose (see teachers.load_tokenizer)
        self.tokenizer.deprecation_warnings["Asking-to-pad-a-fast-tokenizer"] = True
        self.model = AutoModel.from_pretrained(path).to(self.device).eval()
        self.max_length = max_length
        self.inference = pipeline.active() if fast else None
        self._fast = None

    def _fast_encoder(self, ids: list[list[int]]):
        from ..inference import pipeline

        with pipeline.use(self.inference):
            calib = None
            if pipeline.needs_calibration():
                n = pipeline.CALIBRATION_BATCH
                calib = [self.tokenizer.pad({"input_ids": ids[i:i + n]}, return_tensors="pt")
                         for i in range(0, min(len(ids), n * pipeline.CALIBRATION_BATCHES), n)]
            self._fast = pipeline.encoder(self.path, self.device, calib)

    def _features(self, texts: Sequence[str]) -> list[list[int]]:
        return self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]

    def forward(self, ids: list[list[int]]) -> torch.Tensor:
        batch = self.tokenizer.pad({"input_ids": ids}, return_tensors="pt").to(self.device)
        model = self._fast if self._fast is not None else self.model
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(out.dtype)
        pooled = (out * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return torch.nn.functional.normalize(pooled.float(), dim=-1)

    def encode(self, texts: Sequence[str], batch_size: int = 64, progress_label: str | None = None) -> np.ndarray:
        """float32 (len(texts), dim) in input order; batched by token length."""
        ids = self._features(texts) if len(texts) else []
        if self.inference is not None and self._fast is None and ids:
            self._fast_encoder(ids)
        out = np.zeros((len(ids), self.model.config.hidden_size), dtype=np.float32)
        order = np.argsort([-len(x) for x in ids], kind="stable")
        progress = Progress(len(ids), progress_label, unit="texts") if progress_label and ids else None
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                out[idx] = self.forward([ids[i] for i in idx]).cpu().numpy()
                if progress:
                    progress.update(len(idx))
        return out


def fine_tune_biencoder(path: str, out_dir: Path, examples: Sequence[tuple[str, str, str]], *,
                        max_length: int, batch_size: int, epochs: int, lr: float, scale: float,
                        seed: int, warmup: float = 0.1) -> pd.DataFrame:
    """Fine-tune a bi-encoder on (query, positive, hard negative) triples with in-batch
    negatives (multiple-negatives ranking loss: cross-entropy of ``scale`` x cosine over every
    passage of the batch, the query's own positive as target), and save it to ``out_dir``.
    Returns the loss curve (step, loss, lr, elapsed_s)."""
    from transformers import get_linear_schedule_with_warmup

    runtime.seed_everything(seed)
    enc = BiEncoder(path, max_length, fast=False)  # trained: torch whatever inference.* says
    enc.model.train()
    total = math.ceil(len(examples) / batch_size) * epochs
    optimizer = torch.optim.AdamW(enc.model.parameters(), lr=lr, weight_decay=0.01)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(warmup * total), total)
    rng = np.random.default_rng(seed)
    progress = Progress(total, "fine-tune bi-encoder", unit="steps")
    rows, start = [], time.monotonic()
    for _ in range(epochs):
        perm = rng.permutation(len(examples))
        for s in range(0, len(perm), batch_size):
            batch = [examples[i] for i in perm[s:s + batch_size]]
            q = enc.forward(enc._features([x[0] for x in batch]))
            d = enc.forward(enc._features([x[1] for x in batch] + [x[2] for x in batch]))
            logits = scale * q @ d.T
            loss = torch.nn.functional.cross_entropy(logits, torch.arange(len(batch), device=logits.device))
            step_lr = scheduler.get_last_lr()[0]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(enc.model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            rows.append((len(rows) + 1, float(loss.detach()), step_lr, time.monotonic() - start))
            progress.update(1)
    enc.model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    enc.model.save_pretrained(out_dir)
    enc.tokenizer.save_pretrained(out_dir)
    return pd.DataFrame(rows, columns=["step", "loss", "lr", "elapsed_s"])


# --------------------------------------------------------------------------------------------
# The fused teacher
# --------------------------------------------------------------------------------------------

class Features:
    """Per-query, corpus-wide z-normalised feature scores of a fusion teacher directory.

    Passages are found by their text (a hash of it), so the teacher scores any (query, passage)
    text pair: a passage of the fitted corpus reads its stored statistics and embedding, any
    other passage is tokenised and embedded on the fly and normalised by the same query's
    corpus statistics."""

    def __init__(self, directory: str | Path, device: str = "auto", batch_size: int = 64):
        self.dir = Path(directory)
        self.meta = json.loads((self.dir / META_FILE).read_text())
        self.names: list[str] = list(self.meta["features"])
        self.weights = np.asarray(self.meta["weights"], dtype=np.float64)
        if len(self.weights) != len(self.names):
            raise ValueError(f"{self.dir / META_FILE}: {len(self.weights)} weights for {len(self.names)} features")
        ids = pd.read_parquet(self.dir / "doc_ids.parquet")
        self.doc_ids = ids["doc_id"].tolist()
        self.by_hash = dict(zip(ids["text_hash"], range(len(ids))))
        self.batch_size = batch_size
        self._bm25 = BM25.load(self.dir) if "bm25" in self.names else None
        self._dense = {}
        for name in self.names:
            if name.startswith("dense:"):
                spec = self.meta["dense"][name]
                enc = BiEncoder(str(self.dir / spec["model"]), spec["query_max_length"], device)
                self._dense[name] = (enc, np.load(self.dir / spec["embeddings"]))

    def raw_query_scores(self, queries: Sequence[str]) -> dict[str, np.ndarray]:
        """name -> (n_queries, n_docs) raw scores over the whole fitted corpus."""
        out = {}
        if self._bm25 is not None:
            out["bm25"] = (np.stack([self._bm25.scores(q) for q in queries]) if len(queries)
                           else np.zeros((0, len(self.doc_ids)), dtype=np.float32))
        for name, (enc, emb) in self._dense.items():
            # one query at a time: a query's scores must not depend on the queries batched with it
            # (padding and matrix shapes change the last bits), so cached and fresh scores agree
            q = enc.encode(queries, batch_size=1)
            out[name] = np.stack([emb @ v for v in q]) if len(q) else np.zeros((0, len(emb)), dtype=np.float32)
        return out

    def query_scores(self, queries: Sequence[str]) -> dict[str, np.ndarray]:
        """name -> (n_queries, n_docs) z-normalised scores over the whole corpus."""
        return {k: _zscore(v) for k, v in self.raw_query_scores(queries).items()}

    def matrix(self, queries: Sequence[str], docs: Sequence[str], progress_label: str | None = None) -> np.ndarray:
        """(n_pairs, n_features) z-scores of (queries[i], docs[i]) (passage texts); each distinct
        query is scored against the corpus once."""
        out = np.zeros((len(queries), len(self.names)), dtype=np.float32)
        if not len(queries):
            return out
        uniq = list(dict.fromkeys(queries))
        qi = {q: i for i, q in enumerate(uniq)}
        q_idx = np.fromiter((qi[q] for q in queries), dtype=np.int64, count=len(queries))
        rows = np.array([self.by_hash.get(text_hash(d), -1) for d in docs], dtype=np.int64)
        progress = Progress(len(uniq), progress_label, unit="queries") if progress_label else None
        chunk = 256  # queries at a time: (chunk x corpus) score matrices, not (all x corpus)
        for start in range(0, len(uniq), chunk):
            part = uniq[start:start + chunk]
            raw = self.raw_query_scores(part)
            sel = np.nonzero((q_idx >= start) & (q_idx < start + len(part)))[0]
            local = q_idx[sel] - start
            for k, name in enumerate(self.names):
                r = raw[name]
                mean, std = r.mean(axis=1), r.std(axis=1)
                std = np.where(std > 0, std, 1.0)
                known = rows[sel] >= 0
                vals = np.empty(len(sel), dtype=np.float64)
                vals[known] = r[local[known], rows[sel][known]]
                unknown = np.nonzero(~known)[0]
                if len(unknown):
                    vals[unknown] = self._unseen(name, [uniq[start + local[u]] for u in unknown],
                                                 [docs[sel[u]] for u in unknown])
                out[sel, k] = (vals - mean[local]) / std[local]
            if progress:
                progress.update(len(part))
        return out

    def _unseen(self, name: str, queries: list[str], docs: list[str]) -> np.ndarray:
        if name == "bm25":
            return np.array([self._bm25.score_text(q, d) for q, d in zip(queries, docs)])
        enc, _ = self._dense[name]
        # each distinct text once (a query has up to top-k unseen passages, a passage several
        # queries), one at a time as everywhere: a text's vector does not depend on its batch
        q_texts, q_of = np.unique(np.asarray(queries, dtype=object), return_inverse=True)
        d_texts, d_of = np.unique(np.asarray(docs, dtype=object), return_inverse=True)
        q_vec = enc.encode(q_texts.tolist(), batch_size=1)
        d_vec = enc.encode(d_texts.tolist(), batch_size=1)
        return (q_vec[q_of.ravel()] * d_vec[d_of.ravel()]).sum(axis=1)

    def score(self, queries: Sequence[str], docs: Sequence[str], progress_label: str | None = None) -> np.ndarray:
        """The fused pointwise score sum_k w_k z_k per pair, float32."""
        return (self.matrix(queries, docs, progress_label) @ self.weights).astype(np.float32)


def _zscore(scores: np.ndarray) -> np.ndarray:
    mean = scores.mean(axis=1, keepdims=True)
    std = scores.std(axis=1, keepdims=True)
    return (scores - mean) / np.where(std > 0, std, 1.0)


def fit_listwise(features: np.ndarray, group: np.ndarray, labels: np.ndarray, *, l2: float = 1e-3) -> np.ndarray:
    """Weights w minimising the mean over groups of -log softmax(features @ w)[positives]
    (every labelled passage of a group counts as a target; groups without one are skipped),
    plus ``l2`` ||w||^2. ``group`` numbers the rows' groups 0..G-1."""
    x = torch.as_tensor(features, dtype=torch.float64)
    g = torch.as_tensor(group, dtype=torch.long)
    y = torch.as_tensor(labels, dtype=torch.float64)
    n_groups = int(g.max()) + 1 if len(g) else 0
    has_pos = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, g, y) > 0
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        s = x @ w
        mx = torch.full((n_groups,), -torch.inf, dtype=torch.float64).scatter_reduce(0, g, s.detach(), "amax")
        lse = torch.log(torch.zeros(n_groups, dtype=torch.float64).index_add_(0, g, torch.exp(s - mx[g]))) + mx
        pos = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, g, y * s)
        npos = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, g, y)
        nll = (lse - pos / npos.clamp(min=1))[has_pos].mean() + l2 * (w ** 2).sum()
        nll.backward()
        return nll

    opt.step(closure)
    return w.detach().numpy()


def fit_pair_logistic(deltas: np.ndarray, targets: np.ndarray, *, l2=1e-3) -> np.ndarray:
    """Weights v minimising binary cross-entropy of sigmoid(deltas @ v) against ``targets`` (1 when
    a is the relevant one), plus sum_k l2_k v_k^2 (``l2`` a number or one per column); no bias, so
    swapping a and b gives 1 - P."""
    x = torch.as_tensor(deltas, dtype=torch.float64)
    t = torch.as_tensor(targets, dtype=torch.float64)
    l2 = torch.as_tensor(np.broadcast_to(np.asarray(l2, dtype=np.float64), (x.shape[1],)).copy())
    v = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([v], lr=1.0, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ v, t) + (l2 * v ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return v.detach().numpy()


# --------------------------------------------------------------------------------------------
# Fitting: features of the corpus, a fine-tuned bi-encoder, weights on held-out queries
# --------------------------------------------------------------------------------------------

BASE_DENSE = "dense:base"  # the bi-encoder as it comes (all-MiniLM-L6-v2 by default)
TUNED_DENSE = "dense:tuned"  # the same bi-encoder fine-tuned on the training queries
FEATURES = ("bm25", BASE_DENSE, TUNED_DENSE)


def text_hash(text: str) -> str:
    import hashlib

    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def split_heldout(query_ids: Sequence[str], share: float, seed: int) -> tuple[list[str], list[str]]:
    """(fit, held-out) query ids: a seeded ``share`` of the queries is held out."""
    ids = sorted(query_ids)
    rng = np.random.default_rng(seed)
    n_held = int(round(share * len(ids)))
    held = set(rng.choice(ids, size=n_held, replace=False).tolist()) if n_held else set()
    return [q for q in ids if q not in held], sorted(held)


def _ndcg10(scores: np.ndarray, rel: np.ndarray) -> float:
    order = np.argsort(-scores, kind="stable")[:10]
    gains = rel[order] / np.log2(np.arange(2, len(order) + 2))
    ideal = np.sort(rel)[::-1][:10]
    idcg = (ideal / np.log2(np.arange(2, len(ideal) + 2))).sum()
    return float(gains.sum() / idcg) if idcg > 0 else 0.0


def _write_dir(out_dir: Path, meta: dict, files: dict[str, Path]) -> None:
    with io.atomic_path(out_dir, is_dir=True) as tmp:
        for name, src in files.items():
            io.link_or_copy(src, tmp / name)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def fit_fusion(corpus: pd.DataFrame, texts: Sequence[str], queries: dict[str, str],
               positives: dict[str, dict[str, int]], out_dir: str | Path, plain_out: str | Path, *,
               init: str, max_length: int, heldout: float, candidates: int, negatives: int,
               batch_size: int, epochs: int, lr: float, warmup: float, scale: float, seed: int,
               work_dir: str | Path, loss_log=None, log=print) -> dict:
    """Fit the fusion pointwise teacher into ``out_dir`` and the plain BM25 + bi-encoder fusion
    (the baseline it must beat) into ``plain_out``.

    1. BM25 statistics and the base bi-encoder's embeddings of the whole corpus;
    2. a seeded ``heldout`` share of the labelled training queries is set aside;
    3. the bi-encoder is fine-tuned on the other queries: each labelled positive against
       ``negatives`` hard negatives drawn from the plain fusion's top ``candidates`` (and the
       batch's other passages), then the corpus is embedded again;
    4. on the held-out queries' candidate lists (the plain fusion's top ``candidates`` plus the
       labelled positives), the plain fusion's BM25 weight is chosen by nDCG@10 on a grid and
       the teacher's weights are fitted by listwise cross-entropy.
    ``positives`` maps query -> {doc: relevance} (relevance > 0). ``work_dir`` keeps the
    intermediate model files until both directories are written."""
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    doc_ids = corpus["doc_id"].tolist()
    row = {d: i for i, d in enumerate(doc_ids)}
    hashes = [text_hash(t) for t in texts]
    pd.DataFrame({"doc_id": doc_ids, "text_hash": hashes}).to_parquet(work / "doc_ids.parquet", index=False)
    bm25 = BM25.build(texts)
    bm25.save(work)
    base_path = runtime.resolve_model(init)
    base = BiEncoder(base_path, max_length)
    log(f"fusion: BM25 over {len(texts)} passages ({len(bm25.vocab)} terms); embedding them with {init}")
    np.save(work / "emb_base.npy", base.encode(texts, progress_label="embed corpus (base)"))
    labelled = sorted(q for q in positives if q in queries and positives[q])
    fit_ids, held_ids = split_heldout(labelled, heldout, seed)
    log(f"fusion: {len(fit_ids)} training queries fine-tune the bi-encoder, {len(held_ids)} held out fit the weights")

    def dense_meta(name: str, model_dir: str) -> dict:
        return {"model": model_dir, "embeddings": f"emb_{name.split(':')[1]}.npy", "query_max_length": max_length,
                "doc_max_length": max_length}

    # the plain fusion's features, for mining negatives and candidate lists
    io.link_or_copy(Path(base_path), work / "base")
    plain_meta = {"kind": "pointwise", "family": POINTWISE_FAMILY, "features": ["bm25", BASE_DENSE],
                  "dense": {BASE_DENSE: dense_meta(BASE_DENSE, "base")}, "weights": [0.0, 1.0],
                  "max_length": max_length}
    (work / META_FILE).write_text(json.dumps(plain_meta))
    plain = Features(work, device="cpu")
    z_fit = plain.query_scores([queries[q] for q in fit_ids])
    z_held = plain.query_scores([queries[q] for q in held_ids])

    # choose the plain fusion's BM25 weight on the held-out queries (nDCG@10 over the corpus)
    def held_ndcg(z: dict, weights: dict) -> float:
        s = sum(w * z[n] for n, w in weights.items())
        vals = []
        for i, q in enumerate(held_ids):
            rel = np.zeros(len(doc_ids))
            for d, r in positives[q].items():
                if d in row:
                    rel[row[d]] = r
            vals.append(_ndcg10(s[i], rel))
        return float(np.mean(vals)) if vals else 0.0

    grid = [0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0]
    plain_scores = {w: held_ndcg(z_held, {"bm25": w, BASE_DENSE: 1.0}) for w in grid}
    w_bm25 = max(grid, key=lambda w: (plain_scores[w], -w))
    log(f"fusion: plain BM25 weight {w_bm25} (held-out nDCG@10 by weight: "
        f"{ {w: round(v, 4) for w, v in plain_scores.items()} })")

    # fine-tune on hard negatives from the plain fusion's top candidates
    rng = np.random.default_rng(seed)
    fused_fit = w_bm25 * z_fit["bm25"] + z_fit[BASE_DENSE]
    examples = []
    for i, q in enumerate(fit_ids):
        top = np.argpartition(-fused_fit[i], candidates)[:candidates] if candidates < len(doc_ids) else np.arange(len(doc_ids))
        pool = [j for j in top if doc_ids[j] not in positives[q]]
        for d in positives[q]:
            if d not in row or not pool:
                continue
            for j in rng.choice(pool, size=min(negatives, len(pool)), replace=False):
                examples.append((queries[q], texts[row[d]], texts[j]))
    log(f"fusion: fine-tuning on {len(examples)} (query, positive, hard negative) triples")
    curve = fine_tune_biencoder(base_path, work / "tuned", examples, max_length=max_length,
                                batch_size=batch_size, epochs=epochs, lr=lr, scale=scale, seed=seed, warmup=warmup)
    if loss_log is not None:
        io.write_table(curve, "teacher_loss", loss_log)
    tuned = BiEncoder(str(work / "tuned"), max_length)
    np.save(work / "emb_tuned.npy", tuned.encode(texts, progress_label="embed corpus (tuned)"))

    meta = {"kind": "pointwise", "family": POINTWISE_FAMILY, "features": list(FEATURES),
            "dense": {BASE_DENSE: dense_meta(BASE_DENSE, "base"), TUNED_DENSE: dense_meta(TUNED_DENSE, "tuned")},
            "max_length": max_length, "weights": [1.0, 1.0, 1.0]}
    (work / META_FILE).write_text(json.dumps(meta))
    full = Features(work, device="cpu")
    z_held = full.query_scores([queries[q] for q in held_ids])
    rows_x, rows_g, rows_y = [], [], []
    for i, q in enumerate(held_ids):
        plain_s = w_bm25 * z_held["bm25"][i] + z_held[BASE_DENSE][i]
        cand = set(np.argsort(-plain_s)[:candidates].tolist()) | {row[d] for d in positives[q] if d in row}
        cand = sorted(cand)
        rows_x.append(np.stack([z_held[n][i, cand] for n in FEATURES], axis=1))
        rows_g.append(np.full(len(cand), i))
        rows_y.append(np.array([1.0 if doc_ids[j] in positives[q] else 0.0 for j in cand]))
    weights = fit_listwise(np.concatenate(rows_x), np.concatenate(rows_g), np.concatenate(rows_y))
    held_report = {
        "plain fusion": plain_scores[w_bm25],
        "bm25": held_ndcg(z_held, {"bm25": 1.0}), "bi-encoder": held_ndcg(z_held, {BASE_DENSE: 1.0}),
        "tuned bi-encoder": held_ndcg(z_held, {TUNED_DENSE: 1.0}),
        "fusion teacher": held_ndcg(z_held, dict(zip(FEATURES, weights))),
    }
    log(f"fusion: weights { {k: round(float(v), 4) for k, v in zip(FEATURES, weights)} }; held-out nDCG@10 over the corpus "
        f"{ {k: round(v, 4) for k, v in held_report.items()} }")
    split_info = {"seed": seed, "heldout": held_ids, "fit": fit_ids}
    (work / "queries_split.json").write_text(json.dumps(split_info))
    common = {"init": init, "heldout_share": heldout, "candidates": candidates, "heldout_ndcg10": held_report}
    files = {"doc_ids.parquet": work / "doc_ids.parquet", "bm25.npz": work / "bm25.npz",
             "bm25_vocab.json": work / "bm25_vocab.json", "bm25_stats.json": work / "bm25_stats.json",
             "bm25_idf.npy": work / "bm25_idf.npy",
             "emb_base.npy": work / "emb_base.npy", "base": work / "base", "queries_split.json": work / "queries_split.json"}
    _write_dir(Path(out_dir), {**meta, "weights": [float(w) for w in weights], **common},
               {**files, "emb_tuned.npy": work / "emb_tuned.npy", "tuned": work / "tuned"})
    _write_dir(Path(plain_out), {**plain_meta, "weights": [float(w_bm25), 1.0], **common,
                                 "description": "plain fusion: z(BM25) * w + z(bi-encoder), w chosen on held-out queries"},
               files)
    return {"seconds": time.monotonic() - start, "examples": len(examples), "weights": [float(w) for w in weights],
            "plain_bm25_weight": w_bm25, "heldout_ndcg10": held_report}


def rebase_fusion(src_dir: str | Path, corpus: pd.DataFrame, texts: Sequence[str], out_dir: str | Path, *,
                  work_dir: str | Path, reuse: str | Path | None = None, log=print) -> dict:
    """A fitted fusion teacher (``fusion`` or ``fusion-pairwise``) re-based on another corpus into
    ``out_dir``.

    A fusion teacher scores from statistics of the corpus it was fitted on: BM25's document
    frequencies, lengths and vocabulary, each bi-encoder's corpus embeddings, and the per-query
    mean and standard deviation of every feature over that corpus (its z-normalisation). A passage
    of another corpus is scored with all of these (:meth:`Features._unseen`): a query word the
    fitted corpus never saw adds nothing to BM25, a common word of the new corpus keeps the high
    idf of a rare one, and each feature is standardised against the wrong population of passages,
    which changes how the fitted weights mix the features. Re-basing recomputes what belongs to a
    corpus, over ``texts`` (``corpus`` order): BM25's statistics and matrix (same k1, b and
    tokeniser) and the corpus embeddings of every dense feature (its bi-encoder as fitted, its
    document token budget); the z-normalisation then runs over the new corpus at scoring time.
    What was fitted is kept as it is: the features, their weights (and a pairwise teacher's pair
    weights), the fine-tuned bi-encoder. The metadata records the source and its fingerprint.

    ``reuse``: a teacher already re-based on this corpus (the pointwise one, when re-basing the
    pairwise teacher that shares its bi-encoders): a dense feature whose bi-encoder (same files)
    and passage budget it has, over the same passages, takes its corpus embeddings instead of
    encoding the corpus again."""
    src = Path(src_dir)
    meta = json.loads((src / META_FILE).read_text()) if (src / META_FILE).is_file() else {}
    if meta.get("family") not in (POINTWISE_FAMILY, PAIRWISE_FAMILY):
        raise ValueError(f"{src}: not a fitted fusion teacher ({META_FILE} family {meta.get('family')!r})")
    start = time.monotonic()
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    doc_ids = corpus["doc_id"].tolist()
    hashes = [text_hash(t) for t in texts]
    pd.DataFrame({"doc_id": doc_ids, "text_hash": hashes}).to_parquet(work / "doc_ids.parquet", index=False)
    files: dict[str, Path] = {"doc_ids.parquet": work / "doc_ids.parquet"}
    stats: dict = {"documents": len(doc_ids)}
    if "bm25" in meta["features"]:
        bm25 = BM25.build(texts)
        bm25.save(work)
        files.update({n: work / n for n in ("bm25.npz", "bm25_vocab.json", "bm25_idf.npy", "bm25_stats.json")})
        old_vocab = json.loads((src / "bm25_vocab.json").read_text())
        new_terms = sum(1 for t in bm25.vocab if t not in old_vocab)
        stats["bm25"] = {"terms": len(bm25.vocab), "terms_not_in_source": new_terms, "avgdl": bm25.avgdl}
        log(f"rebase: BM25 over {len(texts)} passages ({len(bm25.vocab)} terms, {new_terms} of them unknown to "
            f"the source corpus's {len(old_vocab)})")
    for name in meta["features"]:
        if not name.startswith("dense:"):
            continue
        spec = meta["dense"][name]
        files[spec["model"]] = src / spec["model"]
        doc_max_length = _doc_max_length(spec)
        done = _embedded_by(Path(reuse), src / spec["model"], doc_max_length, hashes) if reuse else None
        if done is not None:
            files[spec["embeddings"]] = done
            stats.setdefault("embeddings_reused", {})[name] = str(done)
            log(f"rebase: corpus embeddings of {name} taken from {done} (the same bi-encoder, passages and budget)")
            continue
        enc = BiEncoder(str(src / spec["model"]), doc_max_length)
        np.save(work / spec["embeddings"], enc.encode(texts, progress_label=f"embed corpus ({name})"))
        files[spec["embeddings"]] = work / spec["embeddings"]
    for extra in ("queries_split.json",):  # the source's fitting queries, kept for the record
        if (src / extra).exists():
            files[extra] = src / extra
    stats["source"] = {"dir": str(src.resolve()), "fingerprint": runtime.model_fingerprint(str(src)),
                       "documents": len(pd.read_parquet(src / "doc_ids.parquet", columns=["doc_id"]))}
    out_meta = {**meta, "rebased": {**stats, "kept": "features, weights" + (", pair weights" if "pair_weights" in meta
                                                                           else "") + ", bi-encoders",
                                    "recomputed": "BM25 statistics, corpus embeddings, z-normalisation population"}}
    _write_dir(Path(out_dir), out_meta, files)
    stats["seconds"] = time.monotonic() - start
    return stats


def _doc_max_length(spec: dict) -> int:
    """A dense feature's passage token budget (teachers fitted before it was recorded: the query's)."""
    return int(spec.get("doc_max_length", spec["query_max_length"]))


def _embedded_by(teacher: Path, model: Path, doc_max_length: int, hashes: list[str]) -> Path | None:
    """The corpus embeddings file of ``teacher`` made by the bi-encoder ``model`` (the same files)
    with ``doc_max_length`` over the passages of ``hashes`` (in order), if it has one."""
    meta_path = teacher / META_FILE
    if not meta_path.is_file() or not (teacher / "doc_ids.parquet").is_file():
        return None
    if pd.read_parquet(teacher / "doc_ids.parquet", columns=["text_hash"])["text_hash"].tolist() != hashes:
        return None
    wanted = runtime.model_fingerprint(str(model))
    for spec in json.loads(meta_path.read_text()).get("dense", {}).values():
        same_budget = _doc_max_length(spec) == doc_max_length
        if same_budget and (teacher / spec["embeddings"]).is_file() and \
                runtime.model_fingerprint(str(teacher / spec["model"])) == wanted:
            return teacher / spec["embeddings"]
    return None


PAIR_FEATURE_SETS = ("margin", "cross")


def pair_features(za: np.ndarray, zb: np.ndarray, weights: np.ndarray, feature_set: str = "margin") -> np.ndarray:
    """Antisymmetric pair features from the two passages' z-scores (n, F).

    ``margin`` (n, 1 + 2F): the pointwise margin s_a - s_b, each feature's difference, and each
    feature's difference of squares / 2 (a signal may matter more at high values than at low ones).
    ``cross`` adds, for every two different features i and j, (z_a,i - z_b,i) (z_a,j + z_b,j) / 2:
    how much one signal's difference counts depending on the pair's level of another (BM25's
    difference between two passages the bi-encoder finds close to the query, say); (n, 1 + 2F + F(F-1)).
    Swapping a and b negates every column, so P(b > a) = 1 - P(a > b) exactly."""
    if feature_set not in PAIR_FEATURE_SETS:
        raise ValueError(f"pair features: {feature_set!r} is not one of {', '.join(PAIR_FEATURE_SETS)}")
    margin = ((za - zb) @ weights)[:, None]
    cols = [margin, za - zb, (za ** 2 - zb ** 2) / 2.0]
    if feature_set == "cross":
        d, s = za - zb, (za + zb) / 2.0
        cols += [d[:, i:i + 1] * s[:, j:j + 1] for i in range(za.shape[1]) for j in range(za.shape[1]) if i != j]
    return np.concatenate(cols, axis=1)


def pair_feature_names(names: Sequence[str], feature_set: str = "margin") -> list[str]:
    out = ["margin", *[f"delta:{n}" for n in names], *[f"sqdelta:{n}" for n in names]]
    if feature_set == "cross":
        out += [f"delta:{a}*level:{b}" for a in names for b in names if a != b]
    return out


class PairwiseFusion:
    """P(a > b | q) = sigmoid(pair_features(z_a, z_b) @ v) over a fusion teacher's features."""

    def __init__(self, directory: str | Path, device: str = "auto", batch_size: int = 64):
        self.features = Features(directory, device, batch_size)
        self.pair_weights = np.asarray(self.features.meta["pair_weights"], dtype=np.float64)
        self.feature_set = self.features.meta.get("pair_feature_set", "margin")  # teachers fitted before: margin

    def logits(self, queries, docs_a, docs_b, progress_label: str | None = None) -> np.ndarray:
        n = len(queries)
        z = self.features.matrix(list(queries) * 2, list(docs_a) + list(docs_b), progress_label)
        return pair_features(z[:n], z[n:], self.features.weights, self.feature_set) @ self.pair_weights

    def prob(self, queries, docs_a, docs_b, progress_label: str | None = None) -> np.ndarray:
        return (1.0 / (1.0 + np.exp(-self.logits(queries, docs_a, docs_b, progress_label)))).astype(np.float32)


def window_pairs(ranked_rel: np.ndarray, delta: int) -> list[tuple[int, int]]:
    """(i, j) positions (0-based) of a ranked list with |i - j| < delta and exactly one of the
    two relevant, oriented so that i is the relevant one."""
    out = []
    for i in range(len(ranked_rel)):
        for j in range(i + 1, min(i + delta, len(ranked_rel))):
            if (ranked_rel[i] > 0) != (ranked_rel[j] > 0):
                out.append((i, j) if ranked_rel[i] > 0 else (j, i))
    return out


def heldout_judged_pairs(feats: Features, query_texts: dict[str, str], positives: dict, depth: int,
                         delta: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(z_a, z_b, query index, held-out queries) of the judged pairs (a relevant, b not) within
    ``delta`` ranks of each other in the pointwise teacher's top ``depth`` over the corpus, for the
    teacher's held-out queries (``queries_split.json``) that have a text and positives."""
    held = json.loads((feats.dir / "queries_split.json").read_text())["heldout"]
    held = [q for q in held if q in query_texts and positives.get(q)]
    z = feats.query_scores([query_texts[q] for q in held])
    za_rows, zb_rows, group = [], [], []
    for i, q in enumerate(held):
        zq = np.stack([z[n][i] for n in feats.names], axis=1)  # (docs, F)
        top = np.argsort(-(zq @ feats.weights), kind="stable")[:depth]
        rel = np.array([1 if feats.doc_ids[j] in positives[q] else 0 for j in top])
        for a, b in window_pairs(rel, delta):
            za_rows.append(zq[top[a]])
            zb_rows.append(zq[top[b]])
            group.append(i)
    width = len(feats.names)
    return (np.array(za_rows).reshape(-1, width), np.array(zb_rows).reshape(-1, width),
            np.array(group, dtype=np.int64), held)


def fit_fusion_pairwise(pointwise_dir: str | Path, out_dir: str | Path, queries: dict[str, str],
                        positives: dict[str, dict[str, int]], *, depth: int, delta: int,
                        l2: float = 1e-2, feature_set: str = "margin", log=print) -> dict:
    """Fit the pairwise fusion teacher on the pointwise one's held-out queries: judged pairs
    (one relevant passage, one not) within ``delta`` ranks of each other in the pointwise
    teacher's top ``depth`` over the corpus. The margin's weight is free; the other weights are
    shrunk towards 0 (``l2``), so the teacher departs from the pointwise order only where the
    held-out pairs say so. ``feature_set``: :func:`pair_features`'."""
    start = time.monotonic()
    src = Path(pointwise_dir)
    feats = Features(src, device="cpu")
    za, zb, _, _ = heldout_judged_pairs(feats, queries, positives, depth, delta)
    if not len(za):
        raise ValueError(f"{src}: no judged pairs within {delta} ranks in the held-out queries' top {depth}")
    x = pair_features(np.concatenate([za, zb]), np.concatenate([zb, za]), feats.weights, feature_set)
    t = np.concatenate([np.ones(len(za)), np.zeros(len(za))])
    penalty = np.r_[0.0, np.full(x.shape[1] - 1, l2)]
    v = fit_pair_logistic(x, t, l2=penalty)
    logits = x @ v
    log_loss = float(np.mean(np.logaddexp(0.0, logits) - t * logits))
    acc_point = float(np.mean((za - zb) @ feats.weights > 0))
    acc_pair = float(np.mean(pair_features(za, zb, feats.weights, feature_set) @ v > 0))
    names = pair_feature_names(feats.names, feature_set)
    log(f"fusion-pairwise: {len(za)} held-out judged pairs; weights { {k: round(float(x), 4) for k, x in zip(names, v)} }; "
        f"held-out pair accuracy: pointwise {acc_point:.4f}, pairwise (fitted on them) {acc_pair:.4f}")
    meta = {**feats.meta, "kind": "pairwise", "family": PAIRWISE_FAMILY, "pair_features": names,
            **({"pair_feature_set": feature_set} if feature_set != "margin" else {}),
            "pair_weights": [float(w) for w in v], "pair_fit": {"depth": depth, "delta": delta, "l2": l2,
                                                                "pairs": len(za), "heldout_accuracy_pointwise": acc_point,
                                                                "heldout_accuracy_pairwise": acc_pair}}
    files = {p.name: p for p in src.iterdir() if p.name != META_FILE}  # linked (Snakemake's markers left out)
    _write_dir(Path(out_dir), meta, files)
    return {"seconds": time.monotonic() - start, "pairs": len(za), "pair_weights": meta["pair_weights"],
            "log_loss": log_loss,
            "heldout_accuracy_pointwise": acc_point, "heldout_accuracy_pairwise": acc_pair}
