"""The DPR student: a single-vector dual encoder, its checkpoint, faiss index and search.

The paper's Table 3 distils a DPR student (the authors' fork of dpr-scale) with the same three
losses as ColBERT. Here a query and a passage are each one vector, pooled from a transformer
encoder's last hidden states (``mean`` under the attention mask, or ``cls``), and the student's
score is ``scale * q.d`` (``dot``) or ``scale * cos(q, d)`` (``cosine``). From all-MiniLM-L6-v2
with mean pooling and cosine, iteration 0 is exactly the sentence-transformers bi-encoder (its own
weights, as :class:`pairdistill.teachers.fusion.BiEncoder` encodes), a real first-stage retriever.

A checkpoint is a directory of plain Hugging Face files: the shared encoder and its tokenizer
(``save_pretrained``) in the directory itself, or one each in ``query_encoder/`` and
``passage_encoder/``, plus ``pairdistill_dpr.json`` (:class:`pairdistill.students.DPRSettings`).
Its index is a faiss index of the passage vectors: exact inner product (``flat``) or an inverted
file (``ivf``: ``nlist`` seeded k-means lists, ``nprobe`` of them searched), in
``index.faiss`` beside ``doc_ids.parquet`` (row -> document id) and the collection's search
settings (:data:`pairdistill.students.runs.SEARCH_SETTINGS`). With cosine the stored vectors are
L2-normalised, so the inner product is the cosine; search multiplies by ``scale``, so a run's
scores are the student's training scores.

The index is built on the CPU (seeded, deterministic) and written as a CPU index; a search runs on
the GPU when the faiss installed is faiss-gpu and a GPU is visible (:func:`_on_gpu`, a copy of the
index). That one path is not exercised by the tests, which run on a CPU.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from .. import io, runtime
from ..errors import InputError, SettingError
from ..progress import Progress
from . import DPR_SETTINGS, FAISS_META, INDEX_TYPES, DPRSettings, read_dpr_settings
from .runs import drop_self_matches, empty_run, index_search_settings, write_search_settings

QUERY_DIR, PASSAGE_DIR = "query_encoder", "passage_encoder"  # separate encoders
INDEX_FILE = "index.faiss"
INDEX_META = FAISS_META


class Tokenize:
    """A Hugging Face tokenizer cut at ``max_length`` tokens: ``tensorize(texts) -> (ids, mask)``,
    padded to the longest text (the training loop's tokenizer interface)."""

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer, self.max_length = tokenizer, int(max_length)

    def tensorize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.tokenizer(list(texts), truncation=True, max_length=self.max_length, padding=True,
                             return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]


def _fp32(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class DPRModel(torch.nn.Module):
    """Query and passage encoders (one module when shared) with pooling; :meth:`query` and
    :meth:`doc` give (n, dim) fp32 vectors, L2-normalised for the cosine score."""

    def __init__(self, query_encoder, passage_encoder, query_tokenizer, doc_tokenizer, settings: DPRSettings):
        super().__init__()
        self.query_encoder = query_encoder
        self.passage_encoder = None if settings.shared else passage_encoder  # shared: not registered twice
        self.tokenizers = {"query": query_tokenizer, "doc": doc_tokenizer}
        self.settings = settings

    def encoders(self) -> list:
        return [self.query_encoder] if self.passage_encoder is None else [self.query_encoder, self.passage_encoder]

    @property
    def dim(self) -> int:
        return int(self.query_encoder.config.hidden_size)

    def _embed(self, encoder, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = _fp32(encoder(input_ids=ids, attention_mask=mask).last_hidden_state)
        if self.settings.pooling == "cls":
            pooled = out[:, 0]
        else:  # sentence-transformers' mean pooling
            m = mask.unsqueeze(-1).to(out.dtype)
            pooled = (out * m).sum(1) / m.sum(1).clamp(min=1.0)
        if self.settings.score == "cosine":
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return pooled

    def query(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self._embed(self.query_encoder, ids, mask)

    def doc(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self._embed(self.passage_encoder if self.passage_encoder is not None else self.query_encoder,
                           ids, mask)


def _load_encoder(path: Path):
    from transformers import AutoModel, AutoTokenizer

    return AutoModel.from_pretrained(str(path)), AutoTokenizer.from_pretrained(str(path))


def load(checkpoint: str | Path, *, query_maxlen: int | None = None, doc_maxlen: int | None = None) -> DPRModel:
    """A DPR checkpoint; ``query_maxlen`` / ``doc_maxlen`` override its token budgets."""
    path = Path(runtime.resolve_model(str(checkpoint)))
    s = read_dpr_settings(path)
    s = DPRSettings(**{**s.__dict__, **{k: v for k, v in dict(query_maxlen=query_maxlen,
                                                                doc_maxlen=doc_maxlen).items() if v}})
    if s.shared:
        enc, tok = _load_encoder(path)
        return DPRModel(enc, None, Tokenize(tok, s.query_maxlen), Tokenize(tok, s.doc_maxlen), s)
    q, qtok = _load_encoder(path / QUERY_DIR)
    p, ptok = _load_encoder(path / PASSAGE_DIR)
    return DPRModel(q, p, Tokenize(qtok, s.query_maxlen), Tokenize(ptok, s.doc_maxlen), s)


def save(model: DPRModel, out_dir: str | Path) -> None:
    """Plain Hugging Face directories plus the settings, atomically."""
    with io.atomic_path(out_dir, is_dir=True) as tmp:
        if model.settings.shared:
            model.query_encoder.save_pretrained(tmp)
            model.tokenizers["query"].tokenizer.save_pretrained(tmp)
        else:
            for sub, enc, kind in ((QUERY_DIR, model.query_encoder, "query"),
                                   (PASSAGE_DIR, model.passage_encoder, "doc")):
                enc.save_pretrained(tmp / sub)
                model.tokenizers[kind].tokenizer.save_pretrained(tmp / sub)
        (tmp / DPR_SETTINGS).write_text(json.dumps(model.settings.to_json(), indent=1) + "\n")


def init_checkpoint(base: str, out_dir: str | Path, settings: DPRSettings, *, seed: int) -> None:
    """Iteration 0: the encoder ``base`` (a plain encoder such as all-MiniLM-L6-v2; its own weights)
    as the query and the passage encoder, shared or as two copies."""
    src = Path(runtime.resolve_model(base))
    if (src / DPR_SETTINGS).is_file():
        raise SettingError(f"student.init: {base} is a DPR checkpoint already; start from its encoder")
    runtime.seed_everything(seed)  # an encoder without pooler weights gets a (seeded) random one
    enc, tok = _load_encoder(src)
    passage = None if settings.shared else copy.deepcopy(enc)
    save(DPRModel(enc, passage, Tokenize(tok, settings.query_maxlen), Tokenize(tok, settings.doc_maxlen),
                  settings), out_dir)


def encode(model: DPRModel, texts: Sequence[str], kind: str, *, batch: int = 64,
           progress_label: str | None = None, device: torch.device | None = None) -> np.ndarray:
    """float32 (len(texts), dim) vectors of ``texts`` as queries (``kind`` query) or passages (doc),
    in input order; batched by token length (chunks of 4096 texts, so a collection never sits
    tokenised at once)."""
    device = device or next(model.parameters()).device
    tok = model.tokenizers[kind]
    fn = model.query if kind == "query" else model.doc
    out = np.zeros((len(texts), model.dim), dtype=np.float32)
    progress = Progress(len(texts), progress_label, unit="texts") if progress_label and len(texts) else None
    with torch.inference_mode():
        for lo in range(0, len(texts), 4096):
            chunk = list(texts[lo:lo + 4096])
            lengths = [len(x) for x in tok.tokenizer(chunk, truncation=True, max_length=tok.max_length)["input_ids"]]
            order = np.argsort([-n for n in lengths], kind="stable")
            for start in range(0, len(order), batch):
                idx = order[start:start + batch]
                ids, mask = tok.tensorize([chunk[i] for i in idx])
                out[lo + idx] = fn(ids.to(device), mask.to(device)).float().cpu().numpy()
                if progress:
                    progress.update(len(idx))
    return out


def _on_gpu(index):
    """``index`` on the GPU when faiss-gpu is installed and a GPU is visible, else itself."""
    import faiss

    if hasattr(faiss, "StandardGpuResources") and torch.cuda.is_available():
        return faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    return index


def faiss_index(vectors: np.ndarray, *, index_type: str, nlist: int, nprobe: int, seed: int):
    """A faiss inner-product index of ``vectors``: exact (flat), or IVF with ``nlist`` lists (at
    most one per vector) from k-means seeded by ``seed``, searching ``nprobe`` of them."""
    import faiss

    if index_type not in INDEX_TYPES:
        raise SettingError(f"index.dpr.type: {index_type!r} is not one of {', '.join(INDEX_TYPES)}")
    faiss.omp_set_num_threads(max(1, torch.get_num_threads()))
    dim = vectors.shape[1]
    if index_type == "flat":
        index = faiss.IndexFlatIP(dim)
        index.add(vectors)
        return index
    nlist = max(1, min(nlist, len(vectors)))
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = int(seed)
    index.train(vectors)
    index.add(vectors)
    index.nprobe = min(nprobe, nlist)
    return index


def _fast_encoder(model: DPRModel, checkpoint: str | Path, kind: str, texts: Sequence[str],
                  device: torch.device) -> None:
    """Under non-default inference.* settings, the ``kind`` encoder of ``model`` replaced by the
    exported one (:func:`pairdistill.inference.pipeline.encoder`; openvino int8: calibrated on the
    first of ``texts``); the pooling and scoring stay the same. Nothing under the default."""
    from ..inference import pipeline

    if pipeline.active() is None:
        return
    path = Path(runtime.resolve_model(str(checkpoint)))
    shared = model.passage_encoder is None
    sub = path if shared else path / (QUERY_DIR if kind == "query" else PASSAGE_DIR)
    calib = None
    if pipeline.needs_calibration():
        n, tok = pipeline.CALIBRATION_BATCH, model.tokenizers[kind]
        calib = [dict(zip(("input_ids", "attention_mask"), tok.tensorize(list(texts[i:i + n]))))
                 for i in range(0, min(len(texts), n * pipeline.CALIBRATION_BATCHES), n)]
    fast = pipeline.encoder(str(sub), device, calib)
    if kind == "query" or shared:
        model.query_encoder = fast
    else:
        model.passage_encoder = fast


def build_index(checkpoint: str | Path, corpus: pd.DataFrame, texts: Sequence[str], out_dir: str | Path, *,
                index_type: str = "flat", nlist: int = 1024, nprobe: int = 32, seed: int = 12345,
                doc_maxlen: int | None = None, query_maxlen: int | None = None,
                drop_self_matches: bool = False, batch: int = 64) -> dict:
    """The faiss index of ``texts`` (aligned with ``corpus.doc_id``) at ``out_dir``, passages cut at
    ``doc_maxlen`` tokens (default the checkpoint's); ``query_maxlen`` and ``drop_self_matches`` are
    kept for every search of this collection, as in a PLAID index."""
    import faiss

    runtime.seed_everything(seed)
    device = runtime.device()
    model = load(checkpoint, doc_maxlen=doc_maxlen).to(device).eval()
    _fast_encoder(model, checkpoint, "doc", texts, device)
    vectors = encode(model, texts, "doc", batch=batch, progress_label="index: encode", device=device)
    index = faiss_index(vectors, index_type=index_type, nlist=nlist, nprobe=nprobe, seed=seed)
    meta = {"kind": "faiss", "type": index_type, "dim": int(vectors.shape[1]), "documents": len(texts),
            "nlist": int(index.nlist) if index_type == "ivf" else None,
            "nprobe": int(index.nprobe) if index_type == "ivf" else None,
            "score": model.settings.score, "scale": model.settings.scale}
    with io.atomic_path(out_dir, is_dir=True) as tmp:
        faiss.write_index(index, str(tmp / INDEX_FILE))
        corpus[["doc_id"]].reset_index(drop=True).to_parquet(tmp / "doc_ids.parquet", index=False)
        write_search_settings(tmp, query_maxlen, drop_self_matches)
        (tmp / INDEX_META).write_text(json.dumps(meta, indent=1) + "\n")
    return {k: v for k, v in meta.items() if k != "kind"}


def read_index(index_dir: str | Path):
    """(faiss index, its metadata) of a DPR index directory; a PLAID one is one line saying so."""
    import faiss

    index_dir = Path(index_dir)
    if not (index_dir / INDEX_META).is_file():
        what = "a PLAID index (a ColBERT student's)" if (index_dir / "metadata.json").exists() else "not a faiss index"
        raise InputError(index_dir, f"{what}; a DPR student searches the faiss index built with it")
    meta = json.loads((index_dir / INDEX_META).read_text())
    index = faiss.read_index(str(index_dir / INDEX_FILE))
    if meta.get("nprobe"):
        index.nprobe = int(meta["nprobe"])
    return index, meta


def search(checkpoint: str | Path, index_dir: str | Path, queries: Mapping[str, str], k: int, *,
           batch: int = 64, progress_label: str | None = None) -> pd.DataFrame:
    """Top-``k`` of every query from the faiss index: a frame in the io "run" schema, scores
    ``scale`` times the inner product (the student's score)."""
    if not queries:
        return empty_run()
    import faiss

    index_dir = Path(index_dir)
    index, meta = read_index(index_dir)
    settings = index_search_settings(index_dir)
    device = runtime.device()
    model = load(checkpoint, query_maxlen=settings.get("query_maxlen")).to(device).eval()
    if model.dim != index.d:
        raise InputError(index_dir, f"holds {index.d}-dimensional vectors; checkpoint {checkpoint} encodes {model.dim}")
    faiss.omp_set_num_threads(max(1, torch.get_num_threads()))
    doc_ids = pd.read_parquet(index_dir / "doc_ids.parquet")["doc_id"].to_numpy()
    drop_self = settings.get("drop_self_matches", False)
    qids = list(queries)
    _fast_encoder(model, checkpoint, "query", [queries[q] for q in qids], device)
    vectors = encode(model, [queries[q] for q in qids], "query", batch=batch,
                     progress_label=progress_label or "search", device=device)
    depth = min(k + 1 if drop_self else k, index.ntotal)
    scores, rows = _on_gpu(index).search(vectors, depth)
    keep = rows >= 0  # IVF: fewer than depth passages in the probed lists
    run = pd.DataFrame({"query_id": np.repeat(np.asarray(qids, dtype=object), depth)[keep.ravel()],
                        "doc_id": doc_ids[rows[keep]],
                        "rank": np.tile(np.arange(1, depth + 1, dtype=np.int32), len(qids))[keep.ravel()],
                        "score": (scores[keep] * model.settings.scale).astype(np.float32)})
    if drop_self:
        run = drop_self_matches(run, k)
    return io.to_table(run, "run").to_pandas()


class DPRKind:
    """The training loop's interface to a DPR student (as :class:`pairdistill.train.loop.ColBERTKind`):
    vectors stand where ColBERT has token matrices, a passage's mask is one always-true "token",
    and the scorers are ``scale`` times inner products, in fp32 outside autocast."""

    arch = "dpr"

    def __init__(self, checkpoint: str | Path):
        self.settings = read_dpr_settings(runtime.resolve_model(str(checkpoint)))

    def load(self, checkpoint, *, query_maxlen: int, doc_maxlen: int) -> DPRModel:
        return load(checkpoint, query_maxlen=query_maxlen, doc_maxlen=doc_maxlen)

    def tokenizers(self, model: DPRModel):
        return model.tokenizers["query"], model.tokenizers["doc"]

    def encode(self, model: DPRModel, q_ids, q_mask, d_ids, d_mask):
        Q, D = model.query(q_ids, q_mask), model.doc(d_ids, d_mask)
        return Q, D, torch.ones(D.shape[0], 1, dtype=torch.bool, device=D.device)

    def score_all(self, Q: torch.Tensor, D: torch.Tensor, D_mask=None) -> torch.Tensor:
        """(nq, dim) x (nd, dim) -> (nq, nd)."""
        with torch.autocast(device_type=Q.device.type, enabled=False):
            return self.settings.scale * (_fp32(Q) @ _fp32(D).T)

    def score_aligned(self, Q: torch.Tensor, D: torch.Tensor, D_mask, nway: int) -> torch.Tensor:
        """Each query against its own ``nway`` passages: (B, dim), (B*nway, dim) -> (B, nway)."""
        with torch.autocast(device_type=Q.device.type, enabled=False):
            return self.settings.scale * torch.einsum("bd,bpd->bp", _fp32(Q), _fp32(D).view(Q.shape[0], nway, -1))

    def gradient_checkpointing(self, model: DPRModel) -> None:
        for enc in model.encoders():
            enc.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def save(self, model: DPRModel, out_dir) -> None:
        save(model, out_dir)
