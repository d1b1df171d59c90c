"""The ColBERT student through stock colbert-ai 0.2.22: initial checkpoint, PLAID index, search.

colbert-ai needs a few guards to run as a pipeline stage, all applied by :func:`setup_colbert`:
- its config saver asks GitPython for the active branch, which raises in a detached-HEAD, an
  empty or a non-git checkout: we replace that metadata with host and command only;
- it compiles C++ extensions on first use into ``TORCH_EXTENSIONS_DIR``: we default it to a
  project-local cache so the build happens once per checkout, not per job;
- indexing runs in-process (``avoid_fork_if_possible``) under a fixed run name, so nothing lands
  in timestamped folders; the index is built in a temporary directory and renamed when complete.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import pandas as pd

from .. import io, runtime
from ..progress import Progress
from . import FAISS_META, arch_of
from .runs import drop_self_matches, empty_run, index_search_settings, write_search_settings

_PATCHED = False


def setup_colbert() -> None:
    """Apply the guards above; safe to call many times."""
    global _PATCHED
    if _PATCHED:
        return
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.cwd() / ".cache" / "torch_extensions"))
    clear_stale_extension_locks(Path(os.environ["TORCH_EXTENSIONS_DIR"]))
    base_config = importlib.import_module("colbert.infra.config.base_config")

    def metadata_without_git() -> dict:
        return {"hostname": socket.gethostname(), "cmd": " ".join(sys.argv)}

    base_config.get_metadata_only = metadata_without_git
    _PATCHED = True


def clear_stale_extension_locks(root: Path, max_age_s: float = 1800.0) -> list[Path]:
    """Remove torch's extension build locks older than ``max_age_s``.

    torch takes ``<extension>/lock`` on every load of a compiled extension, and colbert-ai loads
    its extensions in every index and search job. A job killed while holding it (preemption,
    time limit) leaves the file behind, and every later job would wait on it forever. A build
    takes about two minutes, so a lock half an hour old has no living owner."""
    removed = []
    now = time.time()
    for lock in root.glob("*/lock") if root.is_dir() else ():
        try:
            if now - lock.stat().st_mtime > max_age_s:
                lock.unlink()
                removed.append(lock)
                print(f"removed stale torch extension lock {lock} (left by a killed job)", flush=True)
        except FileNotFoundError:  # another job removed or released it meanwhile
            pass
    return removed


# colbert-ai's classes that load (building on first use) its CPU extensions: MaxSim (1), PLAID's pid
# filter and residual decompression (2), segmented lookup (1)
EXTENSION_LOADERS = ("colbert.modeling.colbert:ColBERT", "colbert.search.index_storage:IndexScorer",
                     "colbert.search.strided_tensor:StridedTensor")


def load_extensions(loader: str) -> None:
    """Load (building when needed) the extensions of one of :data:`EXTENSION_LOADERS`."""
    setup_colbert()
    module, name = loader.split(":")
    getattr(importlib.import_module(module), name).try_load_torch_extensions(use_gpu=False)


def build_extensions() -> list[str]:
    """Compile (or load, when already built) every C++ extension colbert-ai uses on a CPU, into
    ``TORCH_EXTENSIONS_DIR``: the MaxSim kernel of its model, and the pid filter, residual
    decompression and segmented lookup of PLAID search. ``envs/setup.sh`` calls this, so no job
    of a run pays the ~2-minute build. Each extension is one compile, so the three loaders' sets
    build in three processes at once (about half the time on 2 cores; torch locks each
    extension's own directory; they inherit ``TORCH_EXTENSIONS_DIR`` from :func:`setup_colbert`).
    Returns the extension files' names."""
    setup_colbert()
    procs = [(loader, subprocess.Popen(
        [sys.executable, "-c", f"from pairdistill.students.colbert import load_extensions; "
                               f"load_extensions({loader!r})"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        for loader in EXTENSION_LOADERS]
    for loader, proc in procs:
        out, _ = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"building colbert-ai's extensions of {loader} failed "
                               f"(exit {proc.returncode}):\n{out[-4000:]}")
    root = Path(os.environ["TORCH_EXTENSIONS_DIR"])
    return sorted(p.name for p in root.rglob("*.so"))


def colbert_config(**kw):
    setup_colbert()
    from colbert.infra import ColBERTConfig

    return ColBERTConfig(**kw)


@contextlib.contextmanager
def colbert_run(root: str | Path) -> Iterator[None]:
    """A colbert-ai Run context with a fixed name and no GPU assumptions."""
    setup_colbert()
    import torch
    from colbert.infra import Run, RunConfig

    gpus = torch.cuda.device_count()
    with Run().context(RunConfig(nranks=1, gpus=gpus, avoid_fork_if_possible=True,
                                 root=str(root), experiment="pairdistill", name="run")):
        yield


def load_student(checkpoint: str, *, dim: int | None = None, query_maxlen: int | None = None,
                 doc_maxlen: int | None = None):
    """colbert-ai's ColBERT model class on ``checkpoint`` (a colbert checkpoint or a plain BERT)."""
    setup_colbert()
    import torch
    from colbert.modeling.colbert import ColBERT

    path = runtime.resolve_model(checkpoint)
    kw = {k: v for k, v in dict(dim=dim, query_maxlen=query_maxlen, doc_maxlen=doc_maxlen).items()
          if v is not None}
    # checkpoint= makes colbert's tokenizers load from this path instead of bert-base-uncased
    cfg = colbert_config(checkpoint=path, gpus=torch.cuda.device_count(), **kw)
    model = ColBERT(path, colbert_config=cfg)
    return model


def save_student(model, out_dir: str | Path) -> None:
    """Save so stock colbert-ai's Indexer and Searcher can load it, atomically."""
    # model_name None: the checkpoint describes itself (its config.json), not the base it came from
    model.colbert_config.configure(model_name=None, checkpoint=None)
    with io.atomic_path(out_dir, is_dir=True) as tmp:
        model.save(str(tmp))


PROJECTIONS = ("random", "pca")


def pca_projection(model, passages: Sequence[str], dim: int, batch: int = 32):
    """(dim, hidden) rows: the top ``dim`` right singular vectors of the encoder's passage token
    embeddings (as ColBERT sees them: its doc tokenizer, punctuation and padding left out), not
    centred, since MaxSim compares raw inner products. Projecting on them keeps as much of the
    backbone's token geometry as ``dim`` dimensions can, where a random projection keeps it only
    on average."""
    import torch
    from colbert.modeling.tokenization import DocTokenizer

    tokenizer = DocTokenizer(model.colbert_config)
    hidden = []
    with torch.inference_mode():
        for start in range(0, len(passages), batch):
            ids, mask = tokenizer.tensorize(list(passages[start:start + batch]))
            out = model.bert(ids, attention_mask=mask)[0]
            keep = torch.tensor(model.mask(ids, skiplist=model.skiplist), dtype=torch.bool)
            hidden.append(out[keep].float())
    tokens = torch.cat(hidden)
    if tokens.shape[0] < dim:
        raise ValueError(f"pca projection: {tokens.shape[0]} passage tokens cannot give {dim} components")
    _, _, vt = torch.linalg.svd(tokens, full_matrices=False)
    return vt[:dim].contiguous()


def init_checkpoint(base: str, out_dir: str | Path, *, dim: int, query_maxlen: int, doc_maxlen: int,
                    seed: int, projection: str = "random", passages: Sequence[str] = ()) -> None:
    """Iteration 0: a ColBERT on ``base``. ``random``: the base's own projection when it is a
    ColBERT checkpoint, else a new one initialised by colbert-ai (seeded); ``pca``: a new one from
    :func:`pca_projection` of ``passages``."""
    import torch

    if projection not in PROJECTIONS:
        raise ValueError(f"unknown projection {projection!r}; expected one of {PROJECTIONS}")
    if projection == "pca" and (Path(runtime.resolve_model(base)) / "artifact.metadata").exists():
        raise ValueError(f"{base}: a ColBERT checkpoint brings its trained projection; a pca projection would "
                         "replace it (set student.projection: random to keep it)")
    runtime.seed_everything(seed)
    model = load_student(base, dim=dim, query_maxlen=query_maxlen, doc_maxlen=doc_maxlen)
    if projection == "pca":
        model.eval()
        with torch.no_grad():
            model.linear.weight.copy_(pca_projection(model, passages, dim))
    save_student(model, out_dir)


def _tsv_text(text: str) -> str:
    return " ".join(text.split())


def _passage_embedding_cache(progress, reuse: bool, chunk: int = 256):
    """Share the k-means sample's passage embeddings with the indexing pass, and count progress.

    PLAID encodes a sample of passages for k-means, then every passage again; on small corpora
    the sample is the whole corpus. With ``reuse``, each sampled passage's embeddings are kept
    (fp16, which is what the index stores) until the indexing pass asks for that passage, then
    dropped. ``progress`` counts passages as they are encoded; the sample is encoded ``chunk``
    passages at a time so that its (long) encoding shows progress too.
    """
    import torch
    from colbert.indexing.collection_encoder import CollectionEncoder

    original = CollectionEncoder.encode_passages
    cache: dict[str, torch.Tensor] = {}
    first_call = [True]

    def encode(self, passages):
        embs, doclens = [], []
        for start in range(0, len(passages), chunk):
            e, d = original(self, passages[start:start + chunk])
            embs.append(e)
            doclens.extend(d)
            progress.update(len(passages[start:start + chunk]))
        return torch.cat(embs), doclens

    def encode_passages(self, passages):
        if not len(passages):
            return original(self, passages)
        if first_call[0]:  # the k-means sample
            first_call[0] = False
            if not reuse:  # the indexing pass will encode every passage again
                progress.total += len(passages)
            embs, doclens = encode(self, passages)
            if reuse:
                for p, e in zip(passages, torch.split(embs, list(doclens))):
                    cache[p] = e.half()
            return embs, doclens
        missing = [p for p in dict.fromkeys(passages) if p not in cache]
        if missing:
            embs, doclens = encode(self, missing)
            for p, e in zip(missing, torch.split(embs, list(doclens))):
                cache[p] = e.half()
        parts = [cache[p] for p in passages]
        for p in set(passages):
            cache.pop(p, None)
        return torch.cat(parts).float(), [len(e) for e in parts]

    @contextlib.contextmanager
    def active():
        CollectionEncoder.encode_passages = encode_passages
        try:
            yield
        finally:
            CollectionEncoder.encode_passages = original
            cache.clear()

    return active()


@contextlib.contextmanager
def _fast_bert(checkpoint: str | Path, kind: str, texts: Sequence[str]) -> Iterator[None]:
    """Under non-default inference.* settings, every colbert-ai Checkpoint made in this context
    runs the exported encoder (:func:`pairdistill.inference.pipeline.encoder`) as its ``bert``:
    colbert-ai's tokenisation, [Q]/[D] markers, linear layer, masks and normalisation, and what
    the index stores, stay its own. openvino int8 is calibrated on the first ``texts``, tokenised
    as ``kind`` ("doc" or "query"). Nothing under the default."""
    from ..inference import pipeline

    if pipeline.active() is None:
        yield
        return
    from colbert.modeling.checkpoint import Checkpoint

    original = Checkpoint.__init__

    def init(self, *args, **kw):
        original(self, *args, **kw)
        calib = None
        if pipeline.needs_calibration():
            n = pipeline.CALIBRATION_BATCH
            tok = self.doc_tokenizer if kind == "doc" else self.query_tokenizer
            calib = [dict(zip(("input_ids", "attention_mask"), tok.tensorize(list(texts[i:i + n]))))
                     for i in range(0, min(len(texts), n * pipeline.CALIBRATION_BATCHES), n)]
        fast = pipeline.encoder(str(Path(checkpoint).resolve()), self.device, calib)
        setattr(self.model, self.model.base_model_prefix, fast)  # what Checkpoint.bert returns

    Checkpoint.__init__ = init
    try:
        yield
    finally:
        Checkpoint.__init__ = original


@contextlib.contextmanager
def _num_partitions(n: int | None) -> Iterator[None]:
    """Make colbert-ai's indexer use at most ``n`` k-means centroids instead of its own choice,
    2^floor(log2(16 sqrt(#embeddings))), which is 8192 for SciFact's 0.6M embeddings: on CPU
    its k-means then takes ~30 s per iteration. A smaller collection whose own choice is below
    ``n`` keeps it. None keeps colbert-ai's choice."""
    from colbert.indexing.collection_indexer import CollectionIndexer

    if n is None:
        yield
        return
    original = CollectionIndexer.setup

    def setup(self):
        original(self)
        if self.num_partitions > n:
            self.num_partitions = n
            self._save_plan()  # the plan on disk says what the index was built with

    CollectionIndexer.setup = setup
    try:
        yield
    finally:
        CollectionIndexer.setup = original


def build_index(checkpoint: str | Path, corpus: pd.DataFrame, texts: Sequence[str], out_dir: str | Path,
                *, nbits: int, doc_maxlen: int, kmeans_niters: int = 4, index_bsize: int = 64,
                reuse_sample_embeddings: bool = True, seed: int = 12345, num_partitions: int | None = None,
                query_maxlen: int | None = None, drop_self_matches: bool = False) -> dict:
    """PLAID index of ``texts`` (aligned with ``corpus.doc_id``) at ``out_dir``.

    ``out_dir`` also holds ``collection.tsv`` (colbert's passage file, pid = row) and
    ``doc_ids.parquet`` mapping colbert's pids back to document ids. ``num_partitions`` sets the
    number of centroids (None: colbert-ai's own choice).

    Two settings of the collection travel with its index, so that every search of it honours
    them: ``query_maxlen`` (colbert-ai's Searcher takes the index's config over the checkpoint's;
    BEIR's ArguAna has 300-token queries, Climate-FEVER 64) and ``drop_self_matches`` (a hit whose
    document id is the query's own id is dropped, as BEIR's evaluation does: ArguAna's queries are
    arguments of its corpus), kept in ``pairdistill_search.json``.
    """
    setup_colbert()
    from colbert import Indexer

    runtime.seed_everything(seed)
    out_dir = Path(out_dir)
    with io.atomic_path(out_dir, is_dir=True) as tmp:
        tmp = tmp.resolve()
        collection_tsv = tmp / "collection.tsv"
        with open(collection_tsv, "w", encoding="utf-8") as f:
            for pid, text in enumerate(texts):
                f.write(f"{pid}\t{_tsv_text(text)}\n")
        corpus[["doc_id"]].reset_index(drop=True).to_parquet(tmp / "doc_ids.parquet", index=False)
        extra = {"query_maxlen": query_maxlen} if query_maxlen else {}
        cfg = colbert_config(nbits=nbits, doc_maxlen=doc_maxlen, kmeans_niters=kmeans_niters,
                             index_bsize=index_bsize, avoid_fork_if_possible=True, **extra)
        write_search_settings(tmp, query_maxlen, drop_self_matches)
        progress = Progress(len(texts), "index: encode", unit="passages")
        with colbert_run(tmp / ".colbert"), _passage_embedding_cache(progress, reuse_sample_embeddings), \
                _num_partitions(num_partitions), _fast_bert(checkpoint, "doc", texts):
            indexer = Indexer(checkpoint=str(Path(checkpoint).resolve()), config=cfg, verbose=1)
            # the index lives in tmp itself; the absolute name makes colbert ignore index_root
            indexer.index(name=str(tmp), collection=str(collection_tsv), overwrite="force_silent_overwrite")
        meta = json.loads((tmp / "metadata.json").read_text())
    return {"documents": len(texts), **{k: meta[k] for k in ("num_partitions", "num_embeddings", "avg_doclen")
                                        if k in meta}}


def search(checkpoint: str | Path, index_dir: str | Path, queries: Mapping[str, str], k: int, *,
           ncells: int, centroid_score_threshold: float, ndocs: int, batch: int = 64, progress_label: str | None = None) -> pd.DataFrame:
    """Top-``k`` of every query through colbert-ai's Searcher: a frame in the io "run" schema. A DPR
    checkpoint searches its faiss index instead (:func:`pairdistill.students.dpr.search`; the PLAID
    settings are unused)."""
    if not queries:
        return empty_run()
    if arch_of(checkpoint) == "dpr":
        from . import dpr

        return dpr.search(checkpoint, index_dir, queries, k, progress_label=progress_label)
    if (Path(index_dir) / FAISS_META).exists():
        from ..errors import InputError

        raise InputError(index_dir, f"a faiss index (a DPR student's); the ColBERT checkpoint {checkpoint} "
                                    "searches the PLAID index built with it")
    setup_colbert()
    from colbert import Searcher

    index_dir = Path(index_dir).resolve()
    doc_ids = pd.read_parquet(index_dir / "doc_ids.parquet")["doc_id"].to_numpy()
    settings = index_search_settings(index_dir)
    drop_self = settings.get("drop_self_matches", False)
    wanted = k
    k = k + 1 if drop_self else k  # one more, for the query's own document
    kw = dict(ncells=ncells, centroid_score_threshold=centroid_score_threshold, ndocs=ndocs)
    with colbert_run(index_dir / ".colbert"), _fast_bert(checkpoint, "query", list(queries.values())):
        # Search needs passage ids only, and colbert-ai would read the whole collection.tsv into a
        # list (8.8M passages on MS MARCO, in every retrieve shard): give it a one-line stand-in.
        searcher = Searcher(index=str(index_dir), checkpoint=str(Path(checkpoint).resolve()),
                            collection=["(texts are not needed to search)"], config=colbert_config(**kw),
                            verbose=0)
        qids = list(queries)
        progress = Progress(len(qids), progress_label or "search", unit="queries")
        frames = []
        for start in range(0, len(qids), batch):
            chunk = {i: queries[q] for i, q in enumerate(qids[start:start + batch])}
            ranking = searcher.search_all(chunk, k=k).todict()
            for i, hits in ranking.items():
                if not hits:
                    continue
                pids, ranks, scores = zip(*hits)
                frames.append(pd.DataFrame({"query_id": qids[start + i], "doc_id": doc_ids[list(pids)],
                                            "rank": ranks, "score": scores}))
            progress.update(len(chunk))
    run = pd.concat(frames, ignore_index=True) if frames else empty_run()
    if drop_self:
        run = drop_self_matches(run, wanted)
    return io.to_table(run, "run").to_pandas()
