"""Teachers: every family loads and scores the tiny models as computed by hand; fitting learns."""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest
import torch

from pairdistill import io, teachers
from pairdistill.errors import SettingError

QUERIES = ["what is the capital of france", "who wrote hamlet", "how do bees make honey",
           "boiling point of water", "largest ocean on earth"]
DOCS = ["paris is the capital and largest city of france",
        "hamlet is a tragedy written by william shakespeare around 1600",
        "bees make honey from the nectar of flowers, which they store in wax combs",
        "water boils at 100 degrees celsius at sea level",
        "the pacific ocean is the largest and deepest of the oceans"]
OTHER = DOCS[1:] + DOCS[:1]


def _check_order_and_batching(fn, *columns, atol=1e-5):
    """Scores are float32, finite, follow a permutation of the inputs and ignore batch size."""
    base = fn(*columns, batch_size=2)
    assert base.dtype == np.float32 and base.shape == (len(columns[0]),)
    assert np.isfinite(base).all()
    perm = np.random.default_rng(0).permutation(len(columns[0]))
    permuted = fn(*[[c[i] for i in perm] for c in columns], batch_size=3)
    np.testing.assert_allclose(permuted, base[perm], atol=atol)
    np.testing.assert_allclose(fn(*columns, batch_size=1), base, atol=atol)
    return base


def _pointwise(path, **kw):
    def fn(q, d, batch_size):
        scorer = teachers.load_pointwise(path, batch_size=batch_size, device="cpu", **kw)
        return scorer.score(q, d)
    return fn


def _pairwise(path, **kw):
    def fn(q, a, b, batch_size):
        scorer = teachers.load_pairwise(path, batch_size=batch_size, device="cpu", **kw)
        return scorer.prob(q, a, b)
    return fn


# ---------------------------------------------------------------------------------- families

def test_cross_encoder_scores_logit(tiny_cross_encoder_dir):
    scorer = teachers.load_pointwise(tiny_cross_encoder_dir, device="cpu")
    assert scorer.family == "cross-encoder" and scorer.max_length == 256
    scores = _check_order_and_batching(_pointwise(tiny_cross_encoder_dir), QUERIES, DOCS)
    tok, model = scorer.tokenizer, scorer.model
    with torch.inference_mode():
        logit = model(**tok(QUERIES[0], DOCS[0], return_tensors="pt")).logits[0, 0]
    assert scores[0] == pytest.approx(float(logit), abs=1e-5)


def test_cross_encoder_truncates_passage_only(tiny_cross_encoder_dir):
    scorer = teachers.load_pointwise(tiny_cross_encoder_dir, max_length=32, device="cpu")
    feats = scorer.encode([QUERIES[0]], [" ".join(DOCS * 5)])
    ids = feats[0]["input_ids"]
    assert len(ids) == 32
    q_ids = scorer.tokenizer(QUERIES[0], add_special_tokens=False)["input_ids"]
    assert ids[1:1 + len(q_ids)] == q_ids  # the query is intact, the passage is cut


def test_monot5_log_prob_true_by_hand(tiny_t5_dir):
    scorer = teachers.load_pointwise(tiny_t5_dir, device="cpu")
    assert scorer.family == "monot5"
    scores = _check_order_and_batching(_pointwise(tiny_t5_dir), QUERIES, DOCS)
    assert (scores < 0).all()  # log-probabilities

    tok, model = scorer.tokenizer, scorer.model
    enc = tok(f"Query: {QUERIES[0]} Document: {DOCS[0]} Relevant:", return_tensors="pt")
    assert enc["input_ids"][0].tolist() == scorer.encode(QUERIES[:1], DOCS[:1])[0]["input_ids"]
    t, f = tok.encode("true", add_special_tokens=False)[0], tok.encode("false", add_special_tokens=False)[0]
    with torch.inference_mode():
        logits = model(**enc, decoder_input_ids=torch.tensor([[0]])).logits[0, 0]
    expected = torch.log_softmax(logits[[t, f]], dim=-1)[0]
    assert scores[0] == pytest.approx(float(expected), abs=1e-5)


def test_duot5_prob_true_by_hand(tiny_t5_dir):
    scorer = teachers.load_pairwise(tiny_t5_dir, device="cpu")
    assert scorer.family == "duot5" and scorer.max_length == 320
    probs = _check_order_and_batching(_pairwise(tiny_t5_dir), QUERIES, DOCS, OTHER)
    assert ((probs > 0) & (probs < 1)).all()

    tok, model = scorer.tokenizer, scorer.model
    text = f"Query: {QUERIES[0]} Document0: {DOCS[0]} Document1: {OTHER[0]} Relevant:"
    enc = tok(text, return_tensors="pt")
    assert enc["input_ids"][0].tolist() == scorer.encode(QUERIES[:1], DOCS[:1], OTHER[:1])[0]["input_ids"]
    t, f = tok.encode("true", add_special_tokens=False)[0], tok.encode("false", add_special_tokens=False)[0]
    with torch.inference_mode():
        logits = model(**enc, decoder_input_ids=torch.tensor([[0]])).logits[0, 0]
    expected = torch.softmax(logits[[f, t]], dim=-1)[1]
    assert probs[0] == pytest.approx(float(expected), abs=1e-6)


def test_duot5_truncation_keeps_both_documents_and_prompt(tiny_t5_dir):
    scorer = teachers.load_pairwise(tiny_t5_dir, max_length=60, device="cpu")
    tok = scorer.tokenizer
    long_a, long_b = " ".join(DOCS * 4), " ".join(OTHER * 4)
    ids = scorer.encode([QUERIES[0]], [long_a], [long_b])[0]["input_ids"]
    assert len(ids) <= 60 and ids[-1] == tok.eos_token_id
    tail = tok("Relevant:", add_special_tokens=False)["input_ids"]
    assert ids[-1 - len(tail):-1] == tail
    doc1 = tok("Document1:", add_special_tokens=False)["input_ids"]
    pos = next(i for i in range(len(ids)) if ids[i:i + len(doc1)] == doc1)
    n_b = len(ids) - 1 - len(tail) - (pos + len(doc1))
    assert n_b > 5  # the second passage survives a long first one


def test_bert_pairwise_sigmoid_by_hand(tiny_cross_encoder_dir):
    scorer = teachers.load_pairwise(tiny_cross_encoder_dir, device="cpu")
    assert scorer.family == "bert-pairwise"
    probs = _check_order_and_batching(_pairwise(tiny_cross_encoder_dir), QUERIES, DOCS, OTHER)
    assert ((probs > 0) & (probs < 1)).all()
    tok, model = scorer.tokenizer, scorer.model
    enc = tok(f"{QUERIES[0]} [SEP] {DOCS[0]}", OTHER[0], return_tensors="pt")
    with torch.inference_mode():
        logit = model(**enc).logits[0, 0]
    assert probs[0] == pytest.approx(float(torch.sigmoid(logit)), abs=1e-6)
    # segment 0: [CLS] q [SEP] a [SEP]; segment 1: b [SEP]
    types = enc["token_type_ids"][0].tolist()
    seps = [i for i, t in enumerate(enc["input_ids"][0].tolist()) if t == tok.sep_token_id]
    assert set(types[: seps[1] + 1]) == {0} and set(types[seps[1] + 1:]) == {1}


def test_bert_pairwise_truncation_shares_budget(tiny_cross_encoder_dir):
    scorer = teachers.load_pairwise(tiny_cross_encoder_dir, max_length=48, device="cpu")
    tok = scorer.tokenizer
    ids = scorer.encode([QUERIES[0]], [" ".join(DOCS * 5)], [" ".join(OTHER * 5)])[0]["input_ids"]
    assert len(ids) <= 48
    seps = [i for i, t in enumerate(ids) if t == tok.sep_token_id]
    assert len(seps) == 3 and seps[-1] == len(ids) - 1
    n_a, n_b = seps[1] - seps[0] - 1, seps[2] - seps[1] - 1
    assert n_a > 5 and n_b > 5 and abs(n_a - n_b) <= 2


def test_slow_tokenizer_fallback_matches_fast(tiny_t5_dir, tmp_path):
    """castorini's T5 dirs ship only spiece.model; without protobuf the slow tokenizer is used."""
    slow_dir = tmp_path / "t5_slow"
    shutil.copytree(tiny_t5_dir, slow_dir)
    (slow_dir / "tokenizer.json").unlink()
    fast = teachers.load_pointwise(tiny_t5_dir, device="cpu").score(QUERIES, DOCS)
    slow = teachers.load_pointwise(str(slow_dir), device="cpu").score(QUERIES, DOCS)
    np.testing.assert_allclose(slow, fast, atol=1e-5)


@pytest.mark.parametrize("kind", ["pointwise", "pairwise"])
def test_scoring_in_bf16_follows_fp32(kind, tiny_cross_encoder_dir, tiny_t5_dir):
    """teachers.<kind>.precision bf16 (as duoT5-3B on a GPU), on CPU: the model's weights are bf16,
    the scores come back as float32 and stay within bf16 rounding of the fp32 ones."""
    if kind == "pointwise":
        load, args = teachers.load_pointwise, (QUERIES, DOCS)
        call = "score"
    else:
        load, args = teachers.load_pairwise, (QUERIES, DOCS, OTHER)
        call = "prob"
    for path in (tiny_cross_encoder_dir, tiny_t5_dir):
        family = ("cross-encoder" if kind == "pointwise" else "bert-pairwise") if path == tiny_cross_encoder_dir \
            else ("monot5" if kind == "pointwise" else "duot5")
        fp32 = load(path, family, device="cpu")
        bf16 = load(path, family, device="cpu", precision="bf16")
        assert next(bf16.model.parameters()).dtype == torch.bfloat16
        a, b = getattr(fp32, call)(*args), getattr(bf16, call)(*args)
        assert b.dtype == np.float32 and np.isfinite(b).all()
        np.testing.assert_allclose(b, a, atol=0.05, rtol=0.05)


def test_precision_is_part_of_the_teacher_identity(tiny_cross_encoder_dir):
    """Scores made in another dtype are another teacher's: the cache does not reuse them; fp32 keeps
    the identity of files written before the setting existed, and fusion families ignore it."""
    fp32 = json.loads(teachers.identity(tiny_cross_encoder_dir, "cross-encoder", "pointwise", 64))
    bf16 = json.loads(teachers.identity(tiny_cross_encoder_dir, "cross-encoder", "pointwise", 64, "bf16"))
    assert "precision" not in fp32 and bf16["precision"] == "bf16"
    assert {k: v for k, v in bf16.items() if k != "precision"} == fp32
    assert teachers.identity(tiny_cross_encoder_dir, "cross-encoder", "pointwise", 64, "auto") == \
        teachers.identity(tiny_cross_encoder_dir, "cross-encoder", "pointwise", 64)  # auto on a CPU: fp32
    assert teachers.scoring_precision("bf16", "pointwise", "fusion") == "fp32"
    with pytest.raises(SettingError, match=r"^teachers\.pairwise\.precision: fp16 needs a GPU"):
        teachers.load_pairwise(tiny_cross_encoder_dir, "bert-pairwise", device="cpu", precision="fp16")
    with pytest.raises(SettingError, match=r"^teachers\.pointwise\.precision: 'fp8' is not one of"):
        teachers.identity(tiny_cross_encoder_dir, "cross-encoder", "pointwise", 64, "fp8")


def test_empty_input_and_progress(tiny_cross_encoder_dir, capsys):
    scorer = teachers.load_pointwise(tiny_cross_encoder_dir, device="cpu")
    assert scorer.score([], []).shape == (0,)
    scorer.score(QUERIES, DOCS, progress_label="pointwise")
    assert "[pointwise] 5/5 pairs" in capsys.readouterr().err
    with pytest.raises(ValueError):
        scorer.score(QUERIES, DOCS[:2])


@pytest.mark.parametrize("loader", [teachers.load_pointwise, teachers.load_pairwise])
@pytest.mark.parametrize("spec", ["/nonexistent/teacher-model", "./results/no-such-teacher"])
def test_missing_model_names_path(loader, spec):
    with pytest.raises(FileNotFoundError, match="no-such-teacher|nonexistent/teacher-model"):
        loader(spec)


def test_unknown_family_rejected(tiny_cross_encoder_dir):
    with pytest.raises(ValueError, match="family"):
        teachers.load_pointwise(tiny_cross_encoder_dir, family="duot5")


# ---------------------------------------------------------------------------------- fitting

GOOD = "excellent accurate helpful relevant correct answer detailed clear".split()
BAD = "unrelated spam random noise broken wrong advertisement offtopic".split()
TOPICS = "river mountain music science history city train garden planet kitchen".split()


def _groups(n: int = 24, n_neg: int = 3, seed: int = 0):
    """Synthetic groups: positives use GOOD words, negatives BAD words, topics shared."""
    rng = random.Random(seed)

    def passage(topic, pool):
        return " ".join([topic] + rng.sample(pool, 4) + [rng.choice(TOPICS)])

    groups = []
    for _ in range(n):
        topic = rng.choice(TOPICS)
        groups.append((f"tell me about the {topic}", passage(topic, GOOD),
                       [passage(topic, BAD) for _ in range(n_neg)]))
    return groups


def _first_last(curve, k=5):
    return curve["loss"].head(k).mean(), curve["loss"].tail(k).mean()


def test_fit_pointwise_learns_and_reloads(tiny_bert_dir, tmp_path):
    out, log = tmp_path / "pointwise_teacher", tmp_path / "loss.parquet"
    groups = _groups()
    # A random tiny BERT needs a high learning rate to move within a few dozen steps.
    stats = teachers.fit_pointwise(groups, tiny_bert_dir, out, max_length=48, batch_size=4,
                                   epochs=6, lr=5e-3, seed=0, loss_log=log, device="cpu")
    assert stats["steps"] == 36 and np.isfinite(stats["final_loss"])
    curve = io.read_table(log, "teacher_loss")
    assert curve["step"].tolist() == list(range(1, 37))
    first, last = _first_last(curve)
    assert last < first * 0.7, (first, last)
    assert not list(tmp_path.glob(".*tmp"))  # the atomic temp dir is gone

    meta = json.loads((out / teachers.META_FILE).read_text())
    assert meta["kind"] == "pointwise" and meta["family"] == "cross-encoder"
    scorer = teachers.load_pointwise(str(out), device="cpu")
    assert scorer.family == "cross-encoder" and scorer.max_length == 48
    q, pos, negs = groups[0]
    s = scorer.score([q] * (1 + len(negs)), [pos, *negs])
    assert s[0] > s[1:].max()
    with pytest.raises(ValueError, match="pointwise teacher"):
        teachers.load_pairwise(str(out))


def test_fit_pairwise_learns_and_reloads(tiny_bert_dir, tmp_path):
    out, log = tmp_path / "pairwise_teacher", tmp_path / "loss.parquet"
    groups = _groups(n=12, n_neg=2)
    triples = [(q, p, n) for q, p, negs in groups for n in negs]
    qs, pos, neg = (list(c) for c in zip(*triples))

    # The model before training: the fit's own seeded initialisation of the head.
    model, tok = teachers._init_classifier(tiny_bert_dir, seed=0)
    before = teachers.PairwiseScorer(model.eval(), tok, "bert-pairwise", 64, 16,
                                     torch.device("cpu"), tiny_bert_dir).prob(qs, pos, neg)

    stats = teachers.fit_pairwise(groups, tiny_bert_dir, out, max_length=64, batch_size=4,
                                  epochs=8, lr=5e-3, seed=0, loss_log=log, device="cpu")
    assert stats["steps"] == 48 and stats["examples"] == 24
    first, last = _first_last(io.read_table(log, "teacher_loss"))
    assert last < first * 0.7, (first, last)

    scorer = teachers.load_pairwise(str(out), device="cpu")
    assert scorer.family == "bert-pairwise" and scorer.max_length == 64
    after = scorer.prob(qs, pos, neg)
    assert after.mean() > before.mean() + 0.2 and after.mean() > 0.7
    assert scorer.prob(qs, neg, pos).mean() < 0.3
    with pytest.raises(ValueError, match="pairwise teacher"):
        teachers.load_pointwise(str(out))
