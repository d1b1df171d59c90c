"""The DPR student (student.arch dpr) on a tiny random BERT: pooling and scores against a hand
computation, shared and separate encoders, training in the ColBERT loop (a loss that falls, the
gradient cache, a bit-exact resume), the faiss index against brute force, checkpoints that round
trip, iteration 0 from all-MiniLM-L6-v2 as the sentence-transformers bi-encoder, and one-line
errors for settings that cannot work."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from pairdistill import io, students
from pairdistill.students import colbert
from pairdistill import train as training
from pairdistill.errors import InputError, SettingError
from pairdistill.losses import PairDistillLoss
from pairdistill.students import DPRSettings
from pairdistill.students import dpr

import test_train_resume as resume
from test_train_scale import NWAY, _groups, _texts, assert_same_gradients
from workflow import REPO

TEXTS = ["protein folding in the cell", "a virus", "gene therapy trial for heart disease in mice and humans"]


def _ckpt(tmp_path_factory, tiny_bert_dir, name, **kw) -> str:
    out = tmp_path_factory.mktemp(f"dpr_{name}") / "ckpt"
    dpr.init_checkpoint(tiny_bert_dir, out, DPRSettings(query_maxlen=16, doc_maxlen=32, **kw), seed=0)
    return str(out)


@pytest.fixture(scope="module")
def shared(tmp_path_factory, tiny_bert_dir) -> str:
    return _ckpt(tmp_path_factory, tiny_bert_dir, "shared")


@pytest.fixture(scope="module")
def separate(tmp_path_factory, tiny_bert_dir) -> str:
    return _ckpt(tmp_path_factory, tiny_bert_dir, "separate", shared=False)


def _hidden(encoder_dir: str, text: str, max_length: int) -> torch.Tensor:
    """The encoder's last hidden states of ``text`` alone (no padding), straight from transformers."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(encoder_dir)
    enc = AutoModel.from_pretrained(encoder_dir).eval()
    ids = tok(text, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        return enc(**ids).last_hidden_state[0]


@pytest.mark.parametrize("pooling, score, scale", [("mean", "cosine", 20.0), ("mean", "dot", 1.0),
                                                   ("cls", "dot", 0.5), ("cls", "cosine", 7.0)])
def test_vectors_and_scores_by_hand(tmp_path_factory, tiny_bert_dir, pooling, score, scale):
    path = _ckpt(tmp_path_factory, tiny_bert_dir, f"{pooling}_{score}", pooling=pooling, score=score, scale=scale)
    model = dpr.load(path).eval()
    kind = dpr.DPRKind(path)
    # by hand: each text encoded alone, its tokens averaged (or its first token), normalised for cosine
    expected = []
    for text in TEXTS:
        h = _hidden(tiny_bert_dir, text, 32)
        v = h.mean(0) if pooling == "mean" else h[0]
        expected.append(v / v.norm() if score == "cosine" else v)
    expected = torch.stack(expected)
    ids, mask = model.tokenizers["doc"].tensorize(TEXTS)  # padded to the longest: the mask must hide it
    assert mask[1].sum() < mask.shape[1]
    with torch.no_grad():
        D = model.doc(ids, mask)
        Q = model.query(*model.tokenizers["query"].tensorize(TEXTS[:2]))
    assert D.shape == (3, 32) and Q.shape == (2, 32) and D.dtype == torch.float32
    assert torch.allclose(D, expected, atol=1e-5)
    if score == "cosine":
        assert torch.allclose(D.norm(dim=-1), torch.ones(3), atol=1e-6)
    # scores: scale * inner product, every query against every passage, and against its own nway
    wide = kind.score_all(Q, D)
    assert wide.shape == (2, 3)
    assert torch.allclose(wide, scale * torch.tensor([[float(q @ d) for d in D] for q in Q]), atol=1e-5)
    Dg = torch.cat([D, D.flip(0)])  # query 0 owns passages 0..2, query 1 the same reversed
    aligned = kind.score_aligned(Q, Dg, None, 3)
    assert aligned.shape == (2, 3)
    assert torch.allclose(aligned[0], wide[0], atol=1e-6) and torch.allclose(aligned[1], wide[1].flip(0), atol=1e-6)


def test_shared_is_one_encoder_and_separate_two_plain_hf_directories(shared, separate):
    from transformers import AutoModel

    assert students.arch_of(shared) == "dpr" and students.arch_of(separate) == "dpr"
    one, two = dpr.load(shared), dpr.load(separate)
    assert one.passage_encoder is None and len(one.encoders()) == 1
    assert two.passage_encoder is not None and two.passage_encoder is not two.query_encoder
    assert sum(p.numel() for p in two.parameters()) == 2 * sum(p.numel() for p in one.parameters())
    # both start as the base encoder: the same vectors from either side
    ids, mask = two.tokenizers["query"].tensorize(TEXTS)
    with torch.no_grad():
        assert torch.equal(two.eval().query(ids, mask), two.doc(ids, mask))
    # plain Hugging Face directories
    AutoModel.from_pretrained(shared)
    AutoModel.from_pretrained(os.path.join(separate, dpr.QUERY_DIR))
    AutoModel.from_pretrained(os.path.join(separate, dpr.PASSAGE_DIR))


def _batch(model, groups):
    corpus, queries = _texts()
    qtok, dtok = model.tokenizers["query"], model.tokenizers["doc"]
    return training.make_batch(groups, qtok, dtok, queries, corpus, NWAY, True)


@pytest.mark.parametrize("which", ["shared", "separate"])
def test_training_steps_lower_the_loss(which, shared, separate):
    path = shared if which == "shared" else separate
    kind = dpr.DPRKind(path)
    torch.manual_seed(0)
    model = kind.load(path, query_maxlen=16, doc_maxlen=32).eval()  # no dropout: the same loss each step
    batch = _batch(model, _groups())
    loss_fn = PairDistillLoss(lambda_kd=1.0, lambda_pair=3.0, temperature=1.0, use_labels=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    start = [p.detach().clone() for p in model.parameters()]
    losses = []
    for _ in range(8):
        opt.zero_grad()
        parts = training.batch_gradients(model, batch, loss_fn, in_batch_negatives=True, kind=kind)
        opt.step()
        losses.append(float(parts["loss"]))
        assert float(parts["loss_cl"]) > 0 and float(parts["loss_kd"]) > 0 and float(parts["loss_pair"]) > 0
    assert losses[-1] < 0.8 * losses[0], losses
    moved = [not torch.equal(a, b) for a, b in zip(start, model.parameters())]
    assert sum(moved) > len(moved) // 2
    if which == "separate":  # each side learns its own encoder
        q = dict(model.query_encoder.named_parameters())
        p = dict(model.passage_encoder.named_parameters())
        assert any(not torch.equal(q[k], p[k]) for k in q)


def test_micro_batches_give_the_full_batch_gradients(separate):
    grads = [_gradients(separate, _groups(mined=2), micro)[0] for micro in (None, 2)]
    assert len(grads[0]) > 10
    assert_same_gradients(grads[1], grads[0])  # token_type_embeddings sums every token: fp32 rounding


@pytest.fixture(scope="module")
def resume_inputs(tmp_path_factory, tiny_bert_dir):
    root = tmp_path_factory.mktemp("dpr_resume")
    paths = resume.make_inputs(root)
    paths["checkpoint"] = root / "ckpt0"
    dpr.init_checkpoint(tiny_bert_dir, paths["checkpoint"], DPRSettings(shared=False, query_maxlen=16,
                                                                        doc_maxlen=32), seed=0)
    return paths


def _weights(ckpt) -> dict:
    from safetensors.torch import load_file

    return {f"{sub}/{k}": v for sub in (dpr.QUERY_DIR, dpr.PASSAGE_DIR)
            for k, v in load_file(ckpt / sub / "model.safetensors").items()}


def test_a_killed_dpr_training_resumes_bit_identically(resume_inputs, tmp_path, monkeypatch, one_thread):
    def die(*a, **k):
        raise KeyboardInterrupt("preempted")

    kw = dict(in_batch_negatives=True, arch="dpr")
    with monkeypatch.context() as m:
        m.setattr(dpr, "save", die)
        with pytest.raises(KeyboardInterrupt):
            resume._train(resume_inputs, tmp_path, **kw)
    assert [p.name for p in (tmp_path / "state").iterdir()] == ["step-000000004"]
    stats = resume._train(resume_inputs, tmp_path, **kw)
    assert stats["resumed_from_step"] == 4
    ref = tmp_path / "ref"
    resume._train(resume_inputs, ref, state_dir=None, **kw)
    a, b = _weights(tmp_path / "ckpt"), _weights(ref / "ckpt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], v) for k, v in _weights(resume_inputs["checkpoint"]).items())
    cols = ["step", "loss", "loss_cl", "loss_kd", "loss_pair", "lr"]
    pd.testing.assert_frame_equal(io.read_table(tmp_path / "loss.parquet", "loss")[cols],
                                  io.read_table(ref / "loss.parquet", "loss")[cols], check_exact=True)
    assert students.read_dpr_settings(tmp_path / "ckpt") == students.read_dpr_settings(resume_inputs["checkpoint"])


def test_the_checkpoint_must_be_the_configured_kind(resume_inputs, tmp_path):
    with pytest.raises(SettingError, match=r"^student.arch: colbert, but the checkpoint .* is a dpr student$"):
        resume._train(resume_inputs, tmp_path, arch="colbert")


def _gradients(path, groups, micro_batch=None):
    kind = dpr.DPRKind(path)
    model = kind.load(path, query_maxlen=16, doc_maxlen=32).eval()
    loss_fn = PairDistillLoss(lambda_kd=1.0, lambda_pair=3.0, temperature=1.0, use_labels=True)
    parts = training.batch_gradients(model, _batch(model, groups), loss_fn, contrastive_negatives="mined",
                                     in_batch_negatives=True, micro_batch=micro_batch, kind=kind)
    return ({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None},
            {k: float(v) for k, v in parts.items()})


def _worker(rank: int, world: int, port: int, path: str, out: str, micro_batch):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        share = _groups(mined=2)[rank * 4:(rank + 1) * 4]
        grads, parts = _gradients(path, share, micro_batch)
        torch.save({"grads": grads, "parts": parts}, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two processes on gloo
def test_two_processes_give_one_process_gradients(separate, tmp_path):
    """Each process embeds its 4 queries (in micro-batches of 2), the vectors of both are gathered,
    and the summed gradients are one process's over all 8 (in-batch and mined negatives)."""
    import torch.multiprocessing as mp

    from test_train_scale import _free_port

    mp.spawn(_worker, args=(2, _free_port(), separate, str(tmp_path), 2), nprocs=2, join=True)
    one, parts = _gradients(separate, _groups(mined=2))
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert_same_gradients(got["grads"], one)
        assert got["parts"] == pytest.approx(parts, abs=1e-5)


def _corpus(n=40, seed=5):
    corpus, _ = _texts(seed)
    docs = sorted(corpus)[:n]
    return pd.DataFrame({"doc_id": docs, "title": "", "text": [corpus[d] for d in docs]})


def test_flat_search_is_brute_force_and_ivf_probing_every_list_is_flat(shared, tmp_path):
    df = _corpus()
    texts = df["text"].tolist()
    stats = dpr.build_index(shared, df, texts, tmp_path / "flat", seed=1)
    assert stats["documents"] == 40 and stats["type"] == "flat" and stats["dim"] == 32
    _, queries = _texts(5)
    run = colbert.search(shared, tmp_path / "flat", queries, k=7, ncells=1, centroid_score_threshold=0.5, ndocs=8)
    # brute force: every passage scored with the same encoders, scale * cosine
    model = dpr.load(shared).eval()
    D = dpr.encode(model, texts, "doc")
    qids = list(queries)
    Q = dpr.encode(model, [queries[q] for q in qids], "query")
    S = 20.0 * Q @ D.T
    assert len(run) == 7 * len(qids)
    for i, q in enumerate(qids):
        got = run[run["query_id"] == q].sort_values("rank")
        top = np.argsort(-S[i], kind="stable")[:7]
        assert got["rank"].tolist() == list(range(1, 8))
        np.testing.assert_allclose(got["score"].to_numpy(), S[i][top], rtol=1e-5, atol=1e-5)
        assert set(got["doc_id"]) == set(df["doc_id"].to_numpy()[top])  # ties aside, the same passages
    # IVF: seeded, so built twice it is the same file; probing every list it is exact
    for name in ("ivf-a", "ivf-b"):
        dpr.build_index(shared, df, texts, tmp_path / name, index_type="ivf", nlist=4, nprobe=4, seed=1)
    assert (tmp_path / "ivf-a" / dpr.INDEX_FILE).read_bytes() == (tmp_path / "ivf-b" / dpr.INDEX_FILE).read_bytes()
    ivf = dpr.search(shared, tmp_path / "ivf-a", queries, 7)
    pd.testing.assert_frame_equal(ivf[["query_id", "rank"]], run[["query_id", "rank"]])
    np.testing.assert_allclose(ivf["score"], run["score"], rtol=1e-5, atol=1e-5)
    # one list probed of 4: fewer candidates, still ranked and typed as a run
    few = dpr.build_index(shared, df, texts, tmp_path / "ivf-1", index_type="ivf", nlist=4, nprobe=1, seed=1)
    assert few["nprobe"] == 1 and few["nlist"] == 4
    assert len(dpr.search(shared, tmp_path / "ivf-1", queries, 7)) <= len(run)


def test_a_collections_query_length_and_self_matches_travel_with_a_faiss_index(shared, tmp_path):
    df = _corpus()
    dpr.build_index(shared, df, df["text"].tolist(), tmp_path / "idx", drop_self_matches=True, query_maxlen=4)
    doc = df["doc_id"][3]
    queries = {doc: df["text"][3]}  # a query that is one of the documents, under its id
    run = dpr.search(shared, tmp_path / "idx", queries, 5)
    assert doc not in set(run["doc_id"]) and run["rank"].tolist() == [1, 2, 3, 4, 5]
    assert dpr.load(shared, query_maxlen=4).tokenizers["query"].max_length == 4


def test_a_checkpoint_round_trips(separate, tmp_path):
    model = dpr.load(separate)
    dpr.save(model, tmp_path / "again")
    again = dpr.load(tmp_path / "again")
    assert again.settings == model.settings
    a, b = model.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ids, mask = model.tokenizers["doc"].tensorize(TEXTS)
    with torch.no_grad():
        assert torch.equal(model.eval().doc(ids, mask), again.eval().doc(ids, mask))
    # the token budgets the training job gives are the saved checkpoint's
    dpr.save(dpr.load(separate, query_maxlen=8, doc_maxlen=24), tmp_path / "cut")
    s = students.read_dpr_settings(tmp_path / "cut")
    assert (s.query_maxlen, s.doc_maxlen, s.shared) == (8, 24, False)


def test_iteration_0_from_minilm_is_the_sentence_transformers_bi_encoder(tmp_path, minilm_dir):
    from pairdistill.teachers.fusion import BiEncoder

    dpr.init_checkpoint("minilm", tmp_path / "ckpt", DPRSettings(query_maxlen=32, doc_maxlen=128), seed=0)
    model = dpr.load(tmp_path / "ckpt").eval()
    for kind, length in (("doc", 128), ("query", 32)):
        ours = dpr.encode(model, TEXTS, kind)
        theirs = BiEncoder(minilm_dir, max_length=length, device="cpu").encode(TEXTS)
        np.testing.assert_allclose(ours, theirs, atol=2e-6)


@pytest.mark.parametrize("student_cfg, index_cfg, line", [
    ({"dpr": {"pooling": "max"}}, {}, "student.dpr.pooling: 'max' is not one of mean, cls"),
    ({"dpr": {"score": "l2"}}, {}, "student.dpr.score: 'l2' is not one of dot, cosine"),
    ({"dpr": {"scale": 0}}, {}, "student.dpr.scale: must be a number > 0, got 0"),
    ({"dpr": {"shared": "yes"}}, {}, "student.dpr.shared: expected true or false, got 'yes'"),
    ({"dpr": {"pool": "mean"}}, {}, "student.dpr.pool: unknown key"),
    ({}, {"dpr": {"type": "hnsw"}}, "index.dpr.type: 'hnsw' is not one of flat, ivf"),
    ({}, {"dpr": {"type": "ivf", "nlist": 8, "nprobe": 16}}, "index.dpr.nprobe: 16 is more than index.dpr.nlist 8"),
    ({}, {"dpr": {"nlist": 0}}, "index.dpr.nlist: must be an integer >= 1, got 0"),
    ({"arch": "splade"}, {}, "student.arch: 'splade' is not one of colbert, dpr"),
])
def test_bad_settings_are_one_line_naming_the_key(student_cfg, index_cfg, line):
    config = {"student": {"arch": "dpr", "query_maxlen": 32, "doc_maxlen": 128, **student_cfg}, "index": index_cfg}
    with pytest.raises(SettingError) as exc:
        students.check_config(config)
    assert str(exc.value).startswith(line) and "\n" not in str(exc.value)


def test_defaults():
    config = {"student": {"arch": "dpr", "query_maxlen": 32, "doc_maxlen": 128}, "index": {}}
    assert students.check_config(config) == "dpr"
    assert DPRSettings.from_config(config["student"]) == DPRSettings(True, "mean", "cosine", 20.0, 32, 128)
    assert DPRSettings.from_config({**config["student"], "dpr": {"score": "dot"}}).scale == 1.0
    assert students.index_settings({}) == {"type": "flat", "nlist": 1024, "nprobe": 32}
    assert students.check_config({"student": {"query_maxlen": 32}, "index": {"dpr": {"type": "bad"}}}) == "colbert"


def test_an_index_of_the_other_kind_is_one_line(shared, tmp_path):
    df = _corpus(10)
    dpr.build_index(shared, df, df["text"].tolist(), tmp_path / "faiss")
    (tmp_path / "plaid").mkdir()
    (tmp_path / "plaid" / "metadata.json").write_text("{}")
    with pytest.raises(InputError, match="a PLAID index .*; a DPR student searches the faiss index built with it"):
        dpr.search(shared, tmp_path / "plaid", {"q": "cell"}, 3)
    with pytest.raises(InputError, match=r"a faiss index \(a DPR student's\); the ColBERT checkpoint"):
        colbert.search(str(tmp_path / "colbert-ckpt"), tmp_path / "faiss", {"q": "cell"}, 3, ncells=1,
                       centroid_score_threshold=0.5, ndocs=8)


def test_cli_init_checkpoint_and_index_take_the_dpr_settings(tiny_bert_dir, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    base = [sys.executable, "-m", "pairdistill", "--threads", "1"]
    init = base + ["init-checkpoint", "--base", tiny_bert_dir, "--out", str(tmp_path / "ckpt"), "--dim", "128",
                   "--query-maxlen", "12", "--doc-maxlen", "24", "--seed", "0", "--projection", "pca",
                   "--arch", "dpr", "--dpr-shared", "false", "--dpr-pooling", "cls", "--dpr-score", "dot"]
    proc = subprocess.run(init + ["--dpr-scale", "-1"], capture_output=True, text=True, env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert [x for x in proc.stderr.splitlines() if x.startswith("error:")] == [
        "error: student.dpr.scale: must be a number > 0, got -1.0"]
    proc = subprocess.run(init, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert students.read_dpr_settings(tmp_path / "ckpt") == DPRSettings(False, "cls", "dot", 1.0, 12, 24)
    corpus = tmp_path / "corpus.parquet"
    io.write_table(_corpus(12), "corpus", corpus)
    proc = subprocess.run(base + ["index", "--checkpoint", str(tmp_path / "ckpt"), "--corpus", str(corpus),
                                  "--out", str(tmp_path / "index"), "--nbits", "2", "--doc-maxlen", "24",
                                  "--dpr-index", "ivf", "--dpr-nlist", "3", "--dpr-nprobe", "2"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    index, meta = dpr.read_index(tmp_path / "index")
    assert (meta["type"], meta["nlist"], meta["nprobe"], index.nprobe, index.ntotal) == ("ivf", 3, 2, 2, 12)
