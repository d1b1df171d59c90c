"""A fitted fusion teacher re-based on another corpus (fusion.rebase_fusion, stage rebase-fusion):
what belongs to the corpus is recomputed (BM25 statistics, corpus embeddings, the z-normalisation's
population), what was fitted is kept (weights, pair weights, bi-encoders)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pairdistill import io, runtime, teachers
from pairdistill.teachers import fusion

SOURCE_TOPICS = ["cat", "dog", "atom", "star", "cell", "rain", "gene", "iron"]


@pytest.fixture(scope="module")
def source(tmp_path_factory, tiny_bert_dir):
    """Fusion teachers fitted on a small corpus of eight topics (test_fusion's recipe)."""
    out = tmp_path_factory.mktemp("rebase-source")
    docs, queries, positives = [], {}, {}
    for i, topic in enumerate(SOURCE_TOPICS):
        for j in range(4):
            docs.append((f"d{i}-{j}", f"{topic} study number {j} about {topic} and other things {i * j}"))
        for k in range(2):
            queries[f"q{i}-{k}"] = f"what about {topic} {k}"
            positives[f"q{i}-{k}"] = {f"d{i}-{k}": 1}
    corpus = pd.DataFrame({"doc_id": [d for d, _ in docs], "title": "", "text": [t for _, t in docs]})
    texts = [t for _, t in docs]
    fusion.fit_fusion(corpus, texts, queries, positives, out / "pointwise", out / "plain", init=tiny_bert_dir,
                      max_length=32, heldout=0.5, candidates=10, negatives=1, batch_size=4, epochs=1, lr=1e-3,
                      warmup=0.1, scale=20.0, seed=0, work_dir=out / "work", log=lambda *_: None)
    fusion.fit_fusion_pairwise(out / "pointwise", out / "pairwise", queries, positives, depth=8, delta=4,
                               log=lambda *_: None)
    return {"dir": out, "corpus": corpus, "texts": texts}


# The target corpus: words the source never saw ("airfoil", "supersonic", "nozzle"), one of them in
# 3 of its 6 passages, and a word of the source ("star") in one.
TARGET = [
    ("t0", "airfoil lift at supersonic speed"),
    ("t1", "airfoil drag in a wind tunnel airfoil"),
    ("t2", "nozzle flow and shock waves"),
    ("t3", "airfoil flutter"),
    ("t4", "star shaped nozzle"),
    ("t5", "boundary layer on a flat plate with heat transfer"),
]


def _target():
    return pd.DataFrame({"doc_id": [d for d, _ in TARGET], "title": "", "text": [t for _, t in TARGET]})


def _rebase(src, out, corpus, tmp):
    return fusion.rebase_fusion(src, corpus, corpus["text"].tolist(), out, work_dir=tmp / "work", log=lambda *_: None)


def test_rebased_on_its_own_corpus_it_is_the_fitted_teacher(source, tmp_path):
    out = tmp_path / "same"
    _rebase(source["dir"] / "pointwise", out, source["corpus"], tmp_path)
    src = source["dir"] / "pointwise"
    for name in ("bm25_idf.npy", "emb_base.npy", "emb_tuned.npy"):
        np.testing.assert_array_equal(np.load(out / name), np.load(src / name))
    assert json.loads((out / "bm25_vocab.json").read_text()) == json.loads((src / "bm25_vocab.json").read_text())
    a, b = fusion.Features(src, device="cpu"), fusion.Features(out, device="cpu")
    q = ["what about gene 1", "iron atom"]
    docs = source["texts"][10:14]
    np.testing.assert_array_equal(a.score(q * 2, docs), b.score(q * 2, docs))



def test_the_pairwise_teacher_takes_the_rebased_pointwise_embeddings(source, tmp_path):
    """Re-basing the pairwise teacher beside its re-based pointwise teacher links the corpus
    embeddings of the bi-encoders they share, and scores as it does when it encodes them itself."""
    point, pair, alone = tmp_path / "point", tmp_path / "pair", tmp_path / "alone"
    _rebase(source["dir"] / "pointwise", point, _target(), tmp_path)
    stats = fusion.rebase_fusion(source["dir"] / "pairwise", _target(), _target()["text"].tolist(), pair,
                                 work_dir=tmp_path / "work2", reuse=point, log=lambda *_: None)
    assert sorted(stats["embeddings_reused"]) == ["dense:base", "dense:tuned"]
    for name in ("emb_base.npy", "emb_tuned.npy"):
        assert os.path.samefile(pair / name, point / name) or \
            (pair / name).read_bytes() == (point / name).read_bytes()
    _rebase(source["dir"] / "pairwise", alone, _target(), tmp_path)
    texts = [t for _, t in TARGET]
    a, b = (teachers.load_pairwise(str(d), device="cpu") for d in (pair, alone))
    q = ["airfoil lift"] * 3
    np.testing.assert_array_equal(a.prob(q, texts[:3], texts[3:]), b.prob(q, texts[:3], texts[3:]))
    # over other passages, or from a teacher with other bi-encoders, nothing is taken
    other = _target().iloc[:5]
    stats = fusion.rebase_fusion(source["dir"] / "pairwise", other, other["text"].tolist(), tmp_path / "other",
                                 work_dir=tmp_path / "work3", reuse=point, log=lambda *_: None)
    assert "embeddings_reused" not in stats
    assert fusion._embedded_by(point, source["dir"] / "pointwise" / "base", 32, [fusion.text_hash(t) for t in texts])
    assert fusion._embedded_by(point, source["dir"] / "pointwise" / "base", 16,
                               [fusion.text_hash(t) for t in texts]) is None

def test_bm25_of_a_word_the_source_never_saw(source, tmp_path):
    src = source["dir"] / "pointwise"
    out = tmp_path / "rebased"
    stats = _rebase(src, out, _target(), tmp_path)
    assert "airfoil" not in json.loads((src / "bm25_vocab.json").read_text())
    # by hand, Lucene's idf over the 6 target passages: "airfoil" is in 3 of them
    n, df = 6, 3
    idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
    new = fusion.BM25.load(out)
    assert float(new.idf[new.vocab["airfoil"]]) == pytest.approx(idf, rel=1e-6)
    # t3 "airfoil flutter": 2 tokens, tf 1; avgdl over the target's tokens without stop words
    lengths = [len(fusion.bm25_tokens(t)) for _, t in TARGET]
    avgdl = sum(lengths) / len(lengths)
    k1, b = fusion.BM25_K1, fusion.BM25_B
    by_hand = idf * 1 * (k1 + 1) / (1 + k1 * (1 - b + b * 2 / avgdl))
    assert new.score_text("airfoil", TARGET[3][1]) == pytest.approx(by_hand, rel=1e-6)
    assert float(new.scores("airfoil")[3]) == pytest.approx(by_hand, rel=1e-5)
    # the source teacher gives it nothing: a word outside its vocabulary has no idf
    old = fusion.BM25.load(src)
    assert old.score_text("airfoil", TARGET[3][1]) == 0.0
    assert stats["bm25"]["terms_not_in_source"] >= 3 and stats["documents"] == 6


def test_z_scores_are_taken_over_the_new_corpus(source, tmp_path):
    out = tmp_path / "rebased"
    _rebase(source["dir"] / "pointwise", out, _target(), tmp_path)
    feats = fusion.Features(out, device="cpu")
    query = "airfoil at supersonic speed"
    raw = fusion.BM25.load(out).scores(query).astype(np.float64)
    z_bm25 = feats.matrix([query], [TARGET[0][1]])[0, feats.names.index("bm25")]
    assert z_bm25 == pytest.approx((raw[0] - raw.mean()) / raw.std(), rel=1e-5)
    # a passage of the target is found in the re-based corpus (its stored row), not scored on the fly
    assert fusion.text_hash(TARGET[0][1]) in feats.by_hash
    # the dense features too: the corpus embeddings are the fitted bi-encoder's of the target passages
    enc = fusion.BiEncoder(str(out / "tuned"), 32, device="cpu")
    np.testing.assert_allclose(np.load(out / "emb_tuned.npy"), enc.encode(_target()["text"].tolist()), atol=1e-6)


def test_what_was_fitted_is_kept(source, tmp_path):
    src = source["dir"] / "pairwise"
    out = tmp_path / "pair"
    _rebase(src, out, _target(), tmp_path)
    old, new = (json.loads((d / fusion.META_FILE).read_text()) for d in (src, out))
    assert new["weights"] == old["weights"] and new["pair_weights"] == old["pair_weights"]
    assert new["family"] == "fusion-pairwise" and new["features"] == old["features"]
    assert new["rebased"]["source"]["fingerprint"] == runtime.model_fingerprint(str(src))
    assert new["rebased"]["source"]["documents"] == 32 and new["rebased"]["documents"] == 6
    for model in ("base", "tuned"):
        assert runtime.model_fingerprint(str(out / model), None) == runtime.model_fingerprint(str(src / model), None)
    # it loads and scores as a pairwise teacher; a new teacher identity (the cache does not mix them)
    pair = teachers.load_pairwise(str(out), device="cpu")
    texts = [t for _, t in TARGET]
    p = pair.prob(["airfoil lift"] * 2, [texts[0], texts[2]], [texts[2], texts[0]])
    assert p[0] + p[1] == pytest.approx(1.0, abs=1e-6)
    assert teachers.identity(str(out), "auto", "pairwise", None) != teachers.identity(str(src), "auto", "pairwise", None)


def test_not_a_fusion_teacher_is_refused(tmp_path, tiny_bert_dir):
    with pytest.raises(ValueError, match="not a fitted fusion teacher"):
        fusion.rebase_fusion(tiny_bert_dir, _target(), [t for _, t in TARGET], tmp_path / "out", work_dir=tmp_path / "w")
    assert not (tmp_path / "out").exists()


def test_the_stage_on_the_command_line(source, tmp_path):
    corpus = tmp_path / "corpus.parquet"
    io.write_table(_target(), "corpus", corpus)
    env = {**os.environ, "PYTHONPATH": str(Path(fusion.__file__).parents[1])}
    proc = subprocess.run([sys.executable, "-m", "pairdistill", "rebase-fusion", "--teacher",
                           str(source["dir"] / "pointwise"), "--corpus", str(corpus), "--out", str(tmp_path / "model")],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert teachers.detect_family(str(tmp_path / "model"), "pointwise") == "fusion"
    assert not (tmp_path / ".model.work").exists()  # the scratch directory is removed
