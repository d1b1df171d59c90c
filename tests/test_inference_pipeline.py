"""The inference.* settings in the pipeline's encoders and scorers (pairdistill.inference.pipeline).

openvino fp32 against torch fp32, on tiny random models: a ColBERT student's PLAID index and
search (same files and dtypes, same top-k ids, scores within 1e-4), a DPR student's vectors, the
fusion teachers' bi-encoder embeddings, and cross-encoder / bert-pairwise / monoT5 / duoT5 scores,
all within 1e-4; bf16 keeps the ranking (Spearman >= BF16_MIN_SPEARMAN); under the default the
torch models themselves run (no exported model is made) and the teacher identity is unchanged.
"""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from pairdistill import teachers
from pairdistill.inference import pipeline

pytestmark = pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino not installed")
OV = {"backend": "openvino"}
BF16_MIN_SPEARMAN = 0.99
QUERIES = ["cat on a mat", "heart attack risk", "antibiotic resistance", "protein folding", "moon orbit"]
DOCS = ["the cat sat on the mat", "aspirin reduces the risk of heart attack", "proteins fold into shapes",
        "bacteria resist antibiotics through several mechanisms", "the moon orbits the earth"]
OTHER = DOCS[1:] + DOCS[:1]


@pytest.fixture(autouse=True)
def inference_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("PAIRDISTILL_INFERENCE_CACHE", str(tmp_path_factory.getbasetemp() / "inference-cache"))


def _has_bf16() -> bool:
    try:
        return pipeline.active() is None and __import__("pairdistill.inference", fromlist=["x"]).openvino_has_bf16()
    except Exception:
        return False


@pytest.fixture(scope="module")
def corpus(scifact_head):
    return scifact_head


@pytest.fixture(scope="module")
def colbert_checkpoint(tiny_colbert_checkpoint):
    return tiny_colbert_checkpoint


def test_default_runs_the_torch_models(tiny_cross_encoder_dir, tiny_bert_dir):
    from pairdistill.teachers.fusion import BiEncoder

    with pipeline.use({"backend": "torch", "quantize": None}):
        assert pipeline.active() is None
        scorer = teachers.load_pointwise(tiny_cross_encoder_dir, device="cpu")
        assert isinstance(scorer.model, torch.nn.Module) and scorer.model.training is False
        enc = BiEncoder(tiny_bert_dir, 32, "cpu")
        enc.encode(DOCS)
        assert enc._fast is None
        plain = teachers.identity(tiny_cross_encoder_dir, "cross-encoder", "pointwise", None)
    with pipeline.use(OV):
        assert json.loads(teachers.identity(tiny_cross_encoder_dir, "cross-encoder", "pointwise", None))[
            "inference"] == {"backend": "openvino", "quantize": "none", "precision": "fp32"}
    assert "inference" not in json.loads(plain)


def test_colbert_index_and_search_on_openvino(colbert_checkpoint, corpus, tmp_path):
    from pairdistill.students import colbert

    df, texts = corpus
    kw = dict(nbits=2, doc_maxlen=32, kmeans_niters=2, num_partitions=8)
    queries = {f"q{i}": texts[i][:60] for i in range(0, 60, 6)}
    search = dict(k=5, ncells=2, centroid_score_threshold=0.45, ndocs=256)
    runs, files = {}, {}
    for name, s in (("torch", None), ("openvino", OV)):
        with pipeline.use(s):
            colbert.build_index(colbert_checkpoint, df, texts, tmp_path / name, **kw)
            runs[name] = colbert.search(colbert_checkpoint, tmp_path / name, queries, **search)
        files[name] = sorted(p.name for p in (tmp_path / name).iterdir())
    assert files["torch"] == files["openvino"]  # the same index files
    for f in ("centroids.pt", "0.residuals.pt", "0.codes.pt"):
        a, b = torch.load(tmp_path / "torch" / f), torch.load(tmp_path / "openvino" / f)
        assert a.dtype == b.dtype and a.shape == b.shape
    a, b = runs["torch"], runs["openvino"]
    assert a["doc_id"].tolist() == b["doc_id"].tolist()
    np.testing.assert_allclose(b["score"], a["score"], atol=1e-4)


def test_colbert_encodings_on_openvino_and_bf16(colbert_checkpoint, corpus):
    """The checkpoint's own docFromText / queryFromText with the exported bert."""
    from colbert.modeling.checkpoint import Checkpoint

    from pairdistill.students import colbert

    _, texts = corpus
    colbert.setup_colbert()
    cfg = colbert.colbert_config(doc_maxlen=32, query_maxlen=16)

    def encode(settings):
        with pipeline.use(settings), colbert._fast_bert(colbert_checkpoint, "doc", texts):
            ck = Checkpoint(str(colbert_checkpoint.resolve()), colbert_config=cfg, verbose=0)
            d = ck.docFromText(texts[:16], bsize=8, keep_dims=True)[0]
            q = ck.queryFromText(QUERIES)
            return type(ck.bert).__name__, d.float(), q.float()

    name, d0, q0 = encode(None)
    assert name == "BertModel"
    name, d1, q1 = encode(OV)
    assert name == "HiddenStates"
    assert d1.dtype == d0.dtype and q1.dtype == q0.dtype
    torch.testing.assert_close(d1, d0, atol=1e-4, rtol=0)
    torch.testing.assert_close(q1, q0, atol=1e-4, rtol=0)
    if _has_bf16():
        _, d2, q2 = encode({"backend": "openvino", "precision": "bf16"})
        s0 = torch.einsum("qd,nld->qnl", q0[0], d0).amax(-1).sum(0).ravel()
        s2 = torch.einsum("qd,nld->qnl", q2[0], d2).amax(-1).sum(0).ravel()
        assert spearmanr(s0.numpy(), s2.numpy())[0] >= BF16_MIN_SPEARMAN


@pytest.mark.parametrize("shared", [True, False])
def test_dpr_vectors_and_search_on_openvino(shared, tmp_path, tiny_bert_dir, corpus):
    from pairdistill.students import DPRSettings, dpr

    df, texts = corpus
    ckpt = tmp_path / "ckpt"
    dpr.init_checkpoint(tiny_bert_dir, ckpt, DPRSettings(query_maxlen=16, doc_maxlen=32, shared=shared), seed=0)
    queries = {f"q{i}": texts[i][:60] for i in range(0, 60, 6)}
    runs = {}
    for name, s in (("torch", None), ("openvino", OV)):
        with pipeline.use(s):
            dpr.build_index(ckpt, df, texts, tmp_path / name)
            runs[name] = dpr.search(ckpt, tmp_path / name, queries, 5)
    assert runs["torch"]["doc_id"].tolist() == runs["openvino"]["doc_id"].tolist()
    np.testing.assert_allclose(runs["openvino"]["score"], runs["torch"]["score"], atol=1e-4)


def test_biencoder_embeddings_on_openvino(tiny_bert_dir):
    from pairdistill.teachers.fusion import BiEncoder

    texts = DOCS + QUERIES
    a = BiEncoder(tiny_bert_dir, 32, "cpu").encode(texts, batch_size=3)
    with pipeline.use(OV):
        enc = BiEncoder(tiny_bert_dir, 32, "cpu")
    b = enc.encode(texts, batch_size=3)  # the settings it was made under, wherever it encodes
    assert enc._fast is not None and b.dtype == np.float32
    np.testing.assert_allclose(b, a, atol=1e-4)
    if _has_bf16():
        with pipeline.use({"backend": "openvino", "precision": "bf16"}):
            c = BiEncoder(tiny_bert_dir, 32, "cpu").encode(texts)
        assert spearmanr((a @ a.T).ravel(), (c @ c.T).ravel())[0] >= BF16_MIN_SPEARMAN


@pytest.mark.parametrize("family", ["cross-encoder", "bert-pairwise", "monot5", "duot5"])
def test_reranker_scores_on_openvino(family, tiny_cross_encoder_dir, tiny_t5_dir):
    path = tiny_t5_dir if family.endswith("t5") else tiny_cross_encoder_dir
    pairwise = family in ("bert-pairwise", "duot5")
    load = teachers.load_pairwise if pairwise else teachers.load_pointwise
    args = (QUERIES, DOCS, OTHER) if pairwise else (QUERIES, DOCS)

    def scores(settings):
        with pipeline.use(settings):
            scorer = load(path, family, device="cpu", batch_size=2)
            return type(scorer.model).__name__, (scorer.prob if pairwise else scorer.score)(*args)

    name, a = scores(None)
    assert name != "_Scorer"
    name, b = scores(OV)
    assert name == "_Scorer" and b.dtype == np.float32
    np.testing.assert_allclose(b, a, atol=1e-4)


def test_the_stage_flags_reach_the_settings():
    from pairdistill import cli

    parser = cli.build_parser()
    a = parser.parse_args(["index", "--checkpoint", "c", "--corpus", "x", "--out", "o", "--nbits", "2",
                           "--doc-maxlen", "8", "--inference-backend", "openvino", "--inference-precision", "bf16"])
    assert cli.call_arguments(a._stage, a)["inference"] == {"backend": "openvino", "precision": "bf16"}
    a = parser.parse_args(["index", "--checkpoint", "c", "--corpus", "x", "--out", "o", "--nbits", "2",
                           "--doc-maxlen", "8"])
    assert cli.call_arguments(a._stage, a)["inference"] == {}
