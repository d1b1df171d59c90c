"""Instruction teachers (instruct-pointwise, instruct-pairwise) on a tiny T5 and a tiny GPT-2:
scores as computed by hand from the logits, order- and padding-invariant, budgets that cut the
passages only, settings errors that name their key, an identity that follows the prompt, and the
scoring stages writing their Parquet."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import CAUSAL_LABELS, CAUSAL_PROMPTS

from pairdistill import cli, io, stages, teachers
from pairdistill.errors import SettingError
from pairdistill.teachers.instruct import DEFAULT_PROMPT

from test_teachers import DOCS, OTHER, QUERIES  # the other teachers' texts


@pytest.fixture(scope="module", params=["seq2seq", "causal"])
def model(request, tiny_flan_t5_dir, tiny_causal_lm_dir):
    """(path, prompts, labels, label tokens) of each architecture: flan-t5's defaults for the T5,
    a question-last prompt with space-led label words for the decoder-only model."""
    if request.param == "seq2seq":
        return tiny_flan_t5_dir, {}, {}, {"pointwise": ("▁Yes", "▁No"), "pairwise": ("▁A", "▁B")}
    return (tiny_causal_lm_dir, CAUSAL_PROMPTS, {k: list(v) for k, v in CAUSAL_LABELS.items()},
            {"pointwise": ("ĠYes", "ĠNo"), "pairwise": ("ĠA", "ĠB")})


def _load(model, kind, **kw):
    path, prompts, labels, _ = model
    load = teachers.load_pointwise if kind == "pointwise" else teachers.load_pairwise
    return load(path, f"instruct-{kind}", device="cpu", prompt=prompts.get(kind), labels=labels.get(kind), **kw)


def _next_logits(scorer, text: str) -> torch.Tensor:
    """The logits the answer is read from, computed here without the scorer's batching: the first
    decoder step of a T5 (decoder fed its start token), the last position of a causal LM."""
    enc = scorer.tokenizer(text, return_tensors="pt")
    with torch.inference_mode():
        if scorer.causal:
            return scorer.model(**enc).logits[0, -1]
        start = torch.tensor([[scorer.model.config.decoder_start_token_id]])
        return scorer.model(**enc, decoder_input_ids=start).logits[0, 0]


def test_pointwise_is_log_p_yes_by_hand(model):
    path, prompts, _, tokens = model
    scorer = _load(model, "pointwise")
    assert scorer.family == "instruct-pointwise" and scorer.causal == bool(prompts)
    scores = scorer.score(QUERIES, DOCS)
    assert scores.dtype == np.float32 and (scores < 0).all()

    text = prompts.get("pointwise", DEFAULT_PROMPT["pointwise"]).format(query=QUERIES[0], passage=DOCS[0])
    assert scorer.tokenizer(text)["input_ids"] == scorer.encode(QUERIES[:1], DOCS[:1])[0]["input_ids"]
    yes, no = scorer.tokenizer.convert_tokens_to_ids(list(tokens["pointwise"]))
    expected = torch.log_softmax(_next_logits(scorer, text)[[yes, no]], dim=-1)[0]
    assert scores[0] == pytest.approx(float(expected), abs=1e-5)


def test_pairwise_is_p_a_by_hand(model):
    path, prompts, _, tokens = model
    scorer = _load(model, "pairwise")
    assert scorer.family == "instruct-pairwise"
    probs = scorer.prob(QUERIES, DOCS, OTHER)
    assert ((probs > 0) & (probs < 1)).all()

    text = prompts.get("pairwise", DEFAULT_PROMPT["pairwise"]).format(
        query=QUERIES[0], passage_a=DOCS[0], passage_b=OTHER[0])
    assert scorer.tokenizer(text)["input_ids"] == scorer.encode(QUERIES[:1], DOCS[:1], OTHER[:1])[0]["input_ids"]
    a, b = scorer.tokenizer.convert_tokens_to_ids(list(tokens["pairwise"]))
    expected = torch.softmax(_next_logits(scorer, text)[[a, b]], dim=-1)[0]
    assert probs[0] == pytest.approx(float(expected), abs=1e-6)


@pytest.mark.parametrize("kind", ["pointwise", "pairwise"])
def test_scores_ignore_batch_composition_and_padding_side(model, kind):
    """Inputs of different lengths batched together (padding), in another order, one at a time, and
    padded on the other side: every example keeps its score."""
    columns = (QUERIES, DOCS) if kind == "pointwise" else (QUERIES, DOCS, OTHER)
    scorer = _load(model, kind, batch_size=5)
    lengths = {len(f["input_ids"]) for f in scorer.encode(*columns)}
    assert len(lengths) > 1  # the batch of 5 is padded
    call = scorer.score if kind == "pointwise" else scorer.prob
    base = call(*columns)
    perm = np.random.default_rng(0).permutation(len(QUERIES))
    scorer.batch_size = 3
    np.testing.assert_allclose(call(*[[c[i] for i in perm] for c in columns]), base[perm], atol=1e-5)
    scorer.batch_size = 1
    np.testing.assert_allclose(call(*columns), base, atol=1e-5)
    scorer.batch_size = 5
    flipped = {"left": "right", "right": "left"}[scorer.tokenizer.padding_side]
    scorer.tokenizer.padding_side = flipped
    np.testing.assert_allclose(call(*columns), base, atol=1e-5)


def test_causal_padding_needs_the_positions_from_the_mask(tiny_causal_lm_dir):
    """The invariance above is not free: GPT-2 fed a left-padded batch without position ids from the
    mask reads its answer at shifted positions and scores differently."""
    scorer = teachers.load_pointwise(tiny_causal_lm_dir, "instruct-pointwise", device="cpu", batch_size=5,
                                     prompt=CAUSAL_PROMPTS["pointwise"], labels=list(CAUSAL_LABELS["pointwise"]))
    assert scorer.causal and scorer.tokenizer.padding_side == "left"
    feats = scorer.encode(QUERIES, DOCS)
    batch = scorer.tokenizer.pad(feats, return_tensors="pt")
    with torch.inference_mode():
        right = scorer._forward(batch)
        naive = scorer.model(**batch).logits[:, -1][:, list(scorer.label_ids)].float()
    assert not torch.allclose(torch.log_softmax(naive, -1)[:, 0], right, atol=1e-4)


@pytest.mark.parametrize("arch", ["seq2seq", "causal"])
def test_budget_cuts_the_passages_not_the_instruction(arch, tiny_flan_t5_dir, tiny_causal_lm_dir):
    """With the question last (the causal prompt) or first (flan-t5's), a small budget keeps every
    word of the instruction, the query, and a share of each passage."""
    path, prompt = ((tiny_flan_t5_dir, DEFAULT_PROMPT["pairwise"]) if arch == "seq2seq"
                    else (tiny_causal_lm_dir, CAUSAL_PROMPTS["pairwise"]))
    scorer = teachers.load_pairwise(path, "instruct-pairwise", device="cpu", max_length=120, prompt=prompt,
                                    labels=None if arch == "seq2seq" else list(CAUSAL_LABELS["pairwise"]))
    # words only: the tiny T5 vocabulary has no digits, which would decode to nothing
    long_a, long_b = " ".join([DOCS[0], DOCS[4]] * 5), " ".join([DOCS[4], DOCS[0]] * 5)
    ids = scorer.encode([QUERIES[0]], [long_a], [long_b])[0]["input_ids"]
    assert 110 <= len(ids) <= 120  # filled up to the budget
    text = " ".join(scorer.tokenizer.decode(ids, skip_special_tokens=True).split())
    marker_a = "Document A:"
    marker_b = "Document B:"
    instruction = ("Which document is more relevant to the query? Answer only 'A' or 'B'." if arch == "seq2seq"
                   else "Which document is more relevant to the query? Answer:")
    assert instruction in text and f"Query: {QUERIES[0]}" in text
    a = text[text.index(marker_a) + len(marker_a):text.index(marker_b)]
    b = text[text.index(marker_b) + len(marker_b):]
    b = b.replace(instruction, "")
    assert len(a.split()) > 5 and len(b.split()) > 5
    assert long_a.startswith(a.strip()) and long_b.startswith(b.strip())  # each cut, in its own words


def test_both_orders_in_the_pairwise_stage_are_symmetric(tiny_flan_t5_dir, tmp_path):
    """The pairwise stage with both_orders on an instruction teacher: a pair and its reverse are the
    same two model inputs (p_ab of one is p_ba of the other), so prob(a, b) + prob(b, a) = 1, while
    the raw P(A) of the two orders do not sum to 1 (a random model favours a position)."""
    corpus = pd.DataFrame({"doc_id": [f"d{i}" for i in range(len(DOCS))], "title": "", "text": DOCS})
    io.write_table(corpus, "corpus", tmp_path / "corpus.parquet")
    io.write_table(pd.DataFrame({"split": "train", "query_id": ["q0", "q1"], "text": QUERIES[:2]}), "queries",
                   tmp_path / "queries.parquet")
    pairs = pd.DataFrame({"query_id": ["q0", "q0", "q1", "q1"], "doc_a": ["d0", "d3", "d1", "d2"],
                          "doc_b": ["d3", "d0", "d2", "d1"], "rank_a": [1, 2, 1, 2], "rank_b": [2, 1, 2, 1],
                          "n_candidates": 5, "n_sampled": 2})
    io.write_table(pairs, "pairs", tmp_path / "pairs.parquet")
    rows = stages.pairwise(str(tmp_path / "pairs.parquet"), str(tmp_path / "corpus.parquet"),
                           str(tmp_path / "queries.parquet"), str(tmp_path / "pairwise.parquet"),
                           model=tiny_flan_t5_dir, family="instruct-pairwise", max_length=96, batch_size=3,
                           both_orders=True).set_index(["query_id", "doc_a", "doc_b"])
    for q, a, b in [("q0", "d0", "d3"), ("q1", "d1", "d2")]:
        fwd, rev = rows.loc[(q, a, b)], rows.loc[(q, b, a)]
        assert float(fwd["p_ab"]) == pytest.approx(float(rev["p_ba"]), abs=1e-6)
        assert float(fwd["prob"]) + float(rev["prob"]) == pytest.approx(1.0, abs=1e-6)
    assert not np.allclose(rows["p_ab"] + rows["p_ba"].astype("float32"), 1.0, atol=1e-3)


@pytest.mark.parametrize("kind", ["pointwise", "pairwise"])
def test_scoring_in_bf16_follows_fp32(model, kind):
    """teachers.<kind>.precision bf16 (flan-t5-xl on a GPU), here on a CPU: the weights are loaded in
    bf16, the scores come back float32 within bf16 rounding of the fp32 ones, and the identity says so."""
    columns = (QUERIES, DOCS) if kind == "pointwise" else (QUERIES, DOCS, OTHER)
    fp32, bf16 = _load(model, kind), _load(model, kind, precision="bf16")
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    call = "score" if kind == "pointwise" else "prob"
    a, b = getattr(fp32, call)(*columns), getattr(bf16, call)(*columns)
    assert b.dtype == np.float32 and np.isfinite(b).all()
    np.testing.assert_allclose(b, a, atol=0.05, rtol=0.05)
    ident = json.loads(teachers.identity(model[0], f"instruct-{kind}", kind, 64, "bf16", prompt=model[1].get(kind),
                                         labels=model[2].get(kind)))
    assert ident["precision"] == "bf16"


# ---------------------------------------------------------------------------------- settings

@pytest.mark.parametrize("kind, prompt, match", [
    ("pointwise", "Is it relevant? Query: {query}", r"^teachers\.pointwise\.prompt: the template has no \{passage\}"),
    ("pointwise", "{query} {passage} {title}", r"^teachers\.pointwise\.prompt: unknown field \{title\}"),
    ("pointwise", "{query} {passage} {query}", r"^teachers\.pointwise\.prompt: the field \{query\} appears twice"),
    ("pointwise", "{query} {passage!r}", r"^teachers\.pointwise\.prompt: write the field \{passage\} plainly"),
    ("pointwise", "{query} {passage", r"^teachers\.pointwise\.prompt: .*literal brace"),
    ("pairwise", "Query: {query} A: {passage_a}", r"^teachers\.pairwise\.prompt: the template has no \{passage_b\}"),
    ("pairwise", "{query} {passage}", r"^teachers\.pairwise\.prompt: unknown field \{passage\}"),
])
def test_a_template_without_its_fields_is_one_line_naming_the_key(tiny_flan_t5_dir, kind, prompt, match):
    load = teachers.load_pointwise if kind == "pointwise" else teachers.load_pairwise
    with pytest.raises(SettingError, match=match) as err:
        load(tiny_flan_t5_dir, f"instruct-{kind}", device="cpu", prompt=prompt)
    assert "\n" not in str(err.value)
    with pytest.raises(SettingError, match=match):  # the identity, computed first by a stage, says so too
        teachers.identity(tiny_flan_t5_dir, f"instruct-{kind}", kind, 64, prompt=prompt)


def test_a_label_word_that_is_not_one_token_is_one_line_naming_the_key(tiny_flan_t5_dir, tiny_causal_lm_dir):
    with pytest.raises(SettingError, match=r"^teachers\.pointwise\.labels: 'yes' is not one token") as err:
        teachers.load_pointwise(tiny_flan_t5_dir, "instruct-pointwise", device="cpu", labels=["yes", "No"])
    assert "\n" not in str(err.value) and "▁y" in str(err.value)
    with pytest.raises(SettingError, match=r"^teachers\.pairwise\.labels: ' Perhaps' is not one token"):
        teachers.load_pairwise(tiny_causal_lm_dir, "instruct-pairwise", device="cpu",
                               prompt=CAUSAL_PROMPTS["pairwise"], labels=[" A", " Perhaps"])
    with pytest.raises(SettingError, match=r"^teachers\.pairwise\.labels: expected two different words"):
        teachers.load_pairwise(tiny_flan_t5_dir, "instruct-pairwise", device="cpu", labels=["A", "A"])
    with pytest.raises(SettingError, match=r"^teachers\.pointwise\.prompt: family 'monot5' takes no prompt"):
        teachers.load_pointwise(tiny_flan_t5_dir, "monot5", device="cpu", prompt=DEFAULT_PROMPT["pointwise"])


def test_the_instruct_families_are_explicit_only(tiny_flan_t5_dir):
    assert teachers.detect_family(tiny_flan_t5_dir, "pointwise") == "monot5"
    assert teachers.load_pointwise(tiny_flan_t5_dir, device="cpu").family == "monot5"
    with pytest.raises(ValueError, match="unknown pointwise family 'instruct-pairwise'"):
        teachers.load_pointwise(tiny_flan_t5_dir, "instruct-pairwise", device="cpu")


def test_identity_follows_prompt_labels_and_family(tiny_flan_t5_dir):
    def ident(family="instruct-pointwise", **kw):
        return json.loads(teachers.identity(tiny_flan_t5_dir, family, "pointwise", 64, **kw))

    default = ident()
    assert default["family"] == "instruct-pointwise"
    assert default["prompt"] == DEFAULT_PROMPT["pointwise"] and default["labels"] == ["Yes", "No"]
    assert ident(prompt=DEFAULT_PROMPT["pointwise"], labels=["Yes", "No"]) == default  # defaults spelt out
    changed = ident(prompt="Query: {query}\nPassage: {passage}\nRelevant (Yes or No)?")
    assert changed != default and {k for k in changed if changed[k] != default[k]} == {"prompt"}
    assert {k for k, v in ident(labels=["No", "Yes"]).items() if v != default[k]} == {"labels"}
    # the other families' identities are as before the instruction teachers existed
    assert set(ident("monot5")) == {"kind", "family", "max_length", "fingerprint"}


# ---------------------------------------------------------------------------------- CLI

def test_pointwise_stage_through_the_cli_writes_its_parquet(tiny_causal_lm_dir, tmp_path, capsys):
    """`python -m pairdistill pointwise` with a decoder-only instruction teacher, its prompt and label
    words given as flags, scores a top-k into a valid pointwise table recording the prompt."""
    corpus = pd.DataFrame({"doc_id": [f"d{i}" for i in range(len(DOCS))], "title": "", "text": DOCS})
    io.write_table(corpus, "corpus", tmp_path / "corpus.parquet")
    io.write_table(pd.DataFrame({"split": "train", "query_id": ["q0", "q1"], "text": QUERIES[:2]}), "queries",
                   tmp_path / "queries.parquet")
    io.write_table(pd.DataFrame({"split": "train", "query_id": ["q0"], "doc_id": ["d0"], "relevance": [1]}),
                   "qrels", tmp_path / "qrels.parquet")
    topk = pd.DataFrame({"query_id": ["q0"] * 3 + ["q1"] * 3, "doc_id": ["d1", "d2", "d3", "d1", "d4", "d0"],
                         "rank": [1, 2, 3] * 2, "score": [3.0, 2.0, 1.0] * 2})
    io.write_table(topk.astype({"rank": "int32", "score": "float32"}), "run", tmp_path / "topk.parquet")
    argv = ["pointwise", "--topk", str(tmp_path / "topk.parquet"), "--corpus", str(tmp_path / "corpus.parquet"),
            "--queries", str(tmp_path / "queries.parquet"), "--qrels", str(tmp_path / "qrels.parquet"),
            "--out", str(tmp_path / "pointwise.parquet"), "--split", "train", "--model", tiny_causal_lm_dir,
            "--family", "instruct-pointwise", "--max-length", "64", "--batch-size", "4",
            "--prompt", CAUSAL_PROMPTS["pointwise"], "--labels", *CAUSAL_LABELS["pointwise"]]
    assert cli.main(argv) == 0
    rows = io.read_table(tmp_path / "pointwise.parquet", "pointwise")
    assert len(rows) == 7  # the top-k and the positive d0 of q0
    assert rows["teacher_score"].notna().all() and (rows["teacher_score"] < 0).all()
    teacher = json.loads(io.read_metadata(tmp_path / "pointwise.parquet")["teacher"])
    assert teacher["family"] == "instruct-pointwise" and teacher["prompt"] == CAUSAL_PROMPTS["pointwise"]
    scorer = teachers.load_pointwise(tiny_causal_lm_dir, "instruct-pointwise", max_length=64, device="cpu",
                                     prompt=CAUSAL_PROMPTS["pointwise"], labels=list(CAUSAL_LABELS["pointwise"]))
    r = rows.set_index(["query_id", "doc_id"]).loc[("q1", "d4")]
    assert float(r["teacher_score"]) == pytest.approx(float(scorer.score([QUERIES[1]], [DOCS[4]])[0]), abs=1e-5)

    capsys.readouterr()
    assert cli.main([*argv[:-3], "--labels", " Perhaps", " No"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: teachers.pointwise.labels: ' Perhaps' is not one token")
