"""Fusion teachers: BM25 against hand-computed values, the fitted weights, the pairwise terms,
and a whole fit on a tiny corpus with a tiny BERT, loaded through the teacher families."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from pairdistill import teachers
from pairdistill.teachers import fusion

DOCS = ["the cat sat on the mat", "a dog chased the cat", "quantum physics of cold atoms"]


def test_bm25_tokens_drop_stop_words_and_case():
    assert fusion.bm25_tokens("The Cat, and THE mat!") == ["cat", "mat"]


def test_bm25_matches_the_formula_by_hand():
    bm = fusion.BM25.build(DOCS)
    # tokens: [cat, sat, mat] (3), [dog, chased, cat] (3), [quantum, physics, cold, atoms] (4)
    n, avgdl, k1, b = 3, 10 / 3, 1.5, 0.75
    idf_cat = math.log(1 + (n - 2 + 0.5) / (2 + 0.5))
    idf_dog = math.log(1 + (n - 1 + 0.5) / (1 + 0.5))

    def term(idf, tf, dl):
        return idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl / avgdl))

    got = bm.scores("cat dog")
    want = [term(idf_cat, 1, 3), term(idf_cat, 1, 3) + term(idf_dog, 1, 3), 0.0]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert bm.score_text("cat dog", DOCS[1]) == pytest.approx(want[1], rel=1e-6)  # the unseen-text path
    assert np.all(bm.scores("unknown words only") == 0)


def test_bm25_round_trips_through_files(tmp_path):
    bm = fusion.BM25.build(DOCS)
    bm.save(tmp_path)
    back = fusion.BM25.load(tmp_path)
    np.testing.assert_array_equal(back.scores("cold cat"), bm.scores("cold cat"))


def test_listwise_fit_weights_the_informative_feature():
    rng = np.random.default_rng(0)
    groups, feats, labels = [], [], []
    for g in range(60):
        x = rng.normal(size=(10, 2))
        y = np.zeros(10)
        y[int(np.argmax(x[:, 0] + 0.3 * rng.normal(size=10)))] = 1  # feature 0 predicts, feature 1 is noise
        groups.append(np.full(10, g))
        feats.append(x)
        labels.append(y)
    w = fusion.fit_listwise(np.concatenate(feats), np.concatenate(groups), np.concatenate(labels))
    assert w[0] > 1.0 and abs(w[1]) < 0.5 * w[0]


def test_listwise_fit_of_one_feature_by_hand():
    # two groups of two passages: the positive leads by 1 and trails by 1 -> at w the loss is
    # log(1+e^-w) + log(1+e^w), minimal at w = 0
    w = fusion.fit_listwise(np.array([[1.0], [0.0], [0.0], [1.0]]), np.array([0, 0, 1, 1]),
                            np.array([1.0, 0.0, 1.0, 0.0]), l2=0.0)
    assert abs(w[0]) < 1e-4


def test_pair_features_are_antisymmetric_so_probabilities_are_complementary():
    rng = np.random.default_rng(1)
    za, zb, w = rng.normal(size=(5, 3)), rng.normal(size=(5, 3)), rng.normal(size=3)
    np.testing.assert_allclose(fusion.pair_features(za, zb, w), -fusion.pair_features(zb, za, w))
    assert fusion.pair_features(za, zb, w)[:, 0] == pytest.approx((za - zb) @ w)
    assert fusion.pair_feature_names(["bm25", "dense:base"]) == [
        "margin", "delta:bm25", "delta:dense:base", "sqdelta:bm25", "sqdelta:dense:base"]


def test_cross_pair_features_by_hand():
    za, zb, w = np.array([[1.0, 2.0, 0.0]]), np.array([[0.0, 1.0, 2.0]]), np.array([0.5, 0.25, 0.25])
    x = fusion.pair_features(za, zb, w, "cross")
    names = fusion.pair_feature_names(["a", "b", "c"], "cross")
    assert x.shape == (1, 1 + 2 * 3 + 3 * 2) and len(names) == x.shape[1]
    row = dict(zip(names, x[0]))
    # difference of a (1 - 0) times the pair's mean level of b ((2 + 1) / 2); of c (-2) times a's (0.5)
    assert row["delta:a*level:b"] == pytest.approx(1.5) and row["delta:c*level:a"] == pytest.approx(-1.0)
    np.testing.assert_allclose(x[:, :7], fusion.pair_features(za, zb, w))  # margin's columns first
    rng = np.random.default_rng(2)
    za, zb = rng.normal(size=(6, 3)), rng.normal(size=(6, 3))
    np.testing.assert_allclose(fusion.pair_features(za, zb, w, "cross"), -fusion.pair_features(zb, za, w, "cross"))
    with pytest.raises(ValueError, match="'squares' is not one of margin, cross"):
        fusion.pair_features(za, zb, w, "squares")


def test_window_pairs_orient_the_relevant_passage_first():
    assert fusion.window_pairs(np.array([0, 1, 0, 0, 1]), delta=2) == [(1, 0), (1, 2), (4, 3)]
    assert fusion.window_pairs(np.array([1, 1, 0]), delta=10) == [(0, 2), (1, 2)]
    assert fusion.window_pairs(np.array([0, 0]), delta=10) == []


def test_pair_logistic_with_free_margin_and_shrunk_terms():
    x = np.array([[1.0, 0.5], [-1.0, -0.5], [2.0, 1.0], [-2.0, -1.0]])
    t = np.array([1.0, 0.0, 1.0, 0.0])
    v = fusion.fit_pair_logistic(x, t, l2=np.array([0.0, 1e3]))
    assert v[0] > 1.0 and abs(v[1]) < 1e-2  # separable on the margin; the shrunk column stays ~0


def test_split_heldout_is_seeded_and_disjoint():
    ids = [f"q{i}" for i in range(20)]
    fit, held = fusion.split_heldout(ids, 0.25, seed=3)
    assert len(held) == 5 and not set(fit) & set(held) and sorted(fit + held) == sorted(ids)
    assert fusion.split_heldout(ids, 0.25, seed=3) == (fit, held)


# --------------------------------------------------------------------------------------------
# A whole fit on a tiny corpus with a tiny random BERT
# --------------------------------------------------------------------------------------------

TOPICS = ["cat", "dog", "atom", "star", "cell", "rain", "gene", "iron", "wave", "salt", "moon", "bone"]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, tiny_bert_dir):
    out = tmp_path_factory.mktemp("fusion")
    docs, queries, positives = [], {}, {}
    for i, topic in enumerate(TOPICS):
        for j in range(4):
            docs.append((f"d{i}-{j}", f"{topic} study number {j} about {topic} and other things {i * j}"))
        for k in range(2):
            qid = f"q{i}-{k}"
            queries[qid] = f"what about {topic} {k}"
            positives[qid] = {f"d{i}-{k}": 1}
    corpus = pd.DataFrame({"doc_id": [d for d, _ in docs], "title": "", "text": [t for _, t in docs]})
    texts = [t for _, t in docs]
    stats = fusion.fit_fusion(corpus, texts, queries, positives, out / "pointwise", out / "plain",
                              init=tiny_bert_dir, max_length=32, heldout=0.5, candidates=10, negatives=1,
                              batch_size=4, epochs=1, lr=1e-3, warmup=0.1, scale=20.0, seed=0,
                              work_dir=out / "work", log=lambda *_: None)
    pair = fusion.fit_fusion_pairwise(out / "pointwise", out / "pairwise", queries, positives, depth=8, delta=4,
                                      log=lambda *_: None)
    return {"dir": out, "stats": stats, "pair": pair, "texts": texts, "queries": queries}


def test_fit_writes_self_contained_teacher_directories(fitted):
    d = fitted["dir"]
    meta = json.loads((d / "pointwise" / fusion.META_FILE).read_text())
    assert meta["family"] == "fusion" and meta["features"] == list(fusion.FEATURES) and len(meta["weights"]) == 3
    split = json.loads((d / "pointwise" / "queries_split.json").read_text())
    assert len(split["heldout"]) == 12 and not set(split["heldout"]) & set(split["fit"])
    plain = json.loads((d / "plain" / fusion.META_FILE).read_text())
    assert plain["features"] == ["bm25", fusion.BASE_DENSE] and plain["weights"][1] == 1.0
    pair = json.loads((d / "pairwise" / fusion.META_FILE).read_text())
    assert pair["kind"] == "pairwise" and pair["family"] == "fusion-pairwise" and len(pair["pair_weights"]) == 7
    assert (d / "work").is_dir()  # scratch is left to the caller (the fit-fusion stage removes it)


def test_families_are_detected_and_score_as_teachers(fitted):
    d = fitted["dir"]
    assert teachers.detect_family(str(d / "pointwise"), "pointwise") == "fusion"
    assert teachers.detect_family(str(d / "pairwise"), "pairwise") == "fusion-pairwise"
    with pytest.raises(ValueError, match="a pointwise teacher, not a pairwise one"):
        teachers.detect_family(str(d / "pointwise"), "pairwise")
    with pytest.raises(ValueError, match="needs a fitted fusion-pairwise teacher"):
        teachers.load_pairwise(str(d / "pointwise"), "fusion-pairwise", device="cpu")
    point = teachers.load_pointwise(str(d / "pointwise"), device="cpu")
    q, texts = fitted["queries"]["q0-0"], fitted["texts"]
    scores = point.score([q] * 3, texts[:3])
    assert scores.dtype == np.float32 and scores.shape == (3,) and np.all(np.isfinite(scores))
    pair = teachers.load_pairwise(str(d / "pairwise"), device="cpu")
    p_ab = pair.prob([q, q], [texts[0], texts[1]], [texts[1], texts[0]])
    assert p_ab[0] + p_ab[1] == pytest.approx(1.0, abs=1e-6)
    ident = json.loads(teachers.identity(str(d / "pairwise"), "auto", "pairwise", None))
    assert ident["family"] == "fusion-pairwise" and len(ident["fingerprint"]) == 64


def test_cross_pairwise_teacher_scores_with_its_own_features(fitted, tmp_path):
    d = fitted["dir"]
    stats = fusion.fit_fusion_pairwise(d / "pointwise", tmp_path / "cross", fitted["queries"],
                                       {q: {f"d{q[1:].split('-')[0]}-{q.split('-')[1]}": 1} for q in fitted["queries"]},
                                       depth=8, delta=4, feature_set="cross", log=lambda *_: None)
    meta = json.loads((tmp_path / "cross" / fusion.META_FILE).read_text())
    assert meta["pair_feature_set"] == "cross" and len(meta["pair_weights"]) == len(meta["pair_features"]) == 1 + 6 + 6
    assert stats["pairs"] == fitted["pair"]["pairs"]  # the same held-out pairs as the margin teacher's
    pair = fusion.PairwiseFusion(tmp_path / "cross", device="cpu")
    q, texts = fitted["queries"]["q0-0"], fitted["texts"]
    z = pair.features.matrix([q, q], texts[:2])
    by_hand = fusion.pair_features(z[:1], z[1:], pair.features.weights, "cross") @ np.array(meta["pair_weights"])
    assert pair.logits([q], [texts[0]], [texts[1]]) == pytest.approx(by_hand)
    p = pair.prob([q, q], [texts[0], texts[1]], [texts[1], texts[0]])
    assert p[0] + p[1] == pytest.approx(1.0, abs=1e-6)
    assert "pair_feature_set" not in json.loads((d / "pairwise" / fusion.META_FILE).read_text())  # margin: as before


def test_passage_outside_the_corpus_scores_as_if_it_were_in_it(fitted):
    feats = fusion.Features(fitted["dir"] / "pointwise", device="cpu")
    q, text = fitted["queries"]["q3-1"], fitted["texts"][13]
    stored = feats.matrix([q], [text])
    unseen = feats.matrix([q], [text + " "])  # another hash, the same tokens
    assert fusion.text_hash(text) != fusion.text_hash(text + " ")
    np.testing.assert_allclose(unseen, stored, rtol=1e-4, atol=1e-4)


def test_scores_do_not_depend_on_the_other_passages_scored(fitted):
    feats = fusion.Features(fitted["dir"] / "pointwise", device="cpu")
    q, texts = fitted["queries"]["q5-0"], fitted["texts"]
    alone = feats.score([q], [texts[20]])
    among = feats.score([q] * 4 + ["another query"], texts[18:22] + [texts[20]])
    assert alone[0] == among[2]


def test_unseen_pairs_sharing_texts_score_as_each_pair_alone(fitted):
    """A batch of unseen pairs that repeat queries and passages (each text encoded once) gives
    every pair the score it has when scored by itself."""
    feats = fusion.Features(fitted["dir"] / "pointwise", device="cpu")
    q = [fitted["queries"]["q3-1"], fitted["queries"]["q0-0"]]
    d = [t + " " for t in fitted["texts"][10:13]]  # outside the corpus
    queries, docs = [q[0], q[0], q[1], q[1], q[0]], [d[0], d[1], d[0], d[2], d[0]]
    together = feats.matrix(queries, docs)
    alone = np.concatenate([feats.matrix([a], [b]) for a, b in zip(queries, docs)])
    np.testing.assert_array_equal(together, alone)
    np.testing.assert_array_equal(together[0], together[4])
