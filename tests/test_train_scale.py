"""Training at scale, on CPU: precision (fp32 MaxSim and losses for half-precision embeddings, a
bf16-autocast step), micro-batches through the gradient cache, and data-parallel processes, each
checked against one process's full-batch gradients on a tiny random ColBERT.

Dropout: a micro-batch draws other dropout masks than the whole batch would (other shapes), so
the equality with a full batch is checked with dropout off (``model.eval()``); with dropout on,
the gradient cache is checked against the same micro-batches encoded with their graphs from the
same RNG state, which is what its RNG replay guarantees.
"""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from pairdistill.students import colbert
from pairdistill import train as training
from pairdistill.train import loop, parallel
from pairdistill.losses import PairDistillLoss

NWAY, BATCH, QUERIES = 4, 8, 8
VOCAB = ["protein", "cell", "gene", "virus", "dose", "trial", "risk", "brain", "heart", "blood", "mouse",
         "human", "therapy", "signal", "pathway", "tumour", "immune", "growth", "effect", "study"]


def _texts(seed: int = 3):
    rng = np.random.default_rng(seed)
    corpus = {f"d{i:03d}": " ".join(rng.choice(VOCAB, size=int(rng.integers(5, 18)))) for i in range(80)}
    queries = {f"q{i}": " ".join(rng.choice(VOCAB, size=4)) for i in range(QUERIES)}
    return corpus, queries


def _groups(mined: int = 0, seed: int = 3) -> list[training.Group]:
    rng = np.random.default_rng(seed)
    docs = [f"d{i:03d}" for i in range(80)]
    out = []
    for n in range(QUERIES):
        mine = docs[n * NWAY:(n + 1) * NWAY]
        pos = -1 if n == 5 else 0  # one unlabelled query among them
        pairs = [(0, 1, float(rng.uniform())), (1, 3, float(rng.uniform())), (2, 3, float(rng.uniform()))]
        negs = [docs[40 + (n * 3 + k) % 40] for k in range(mined)] if pos >= 0 else []
        out.append(training.Group(f"q{n}", mine, sorted(rng.normal(size=NWAY).tolist(), reverse=True), pos, pairs,
                                  negs))
    return out


@pytest.fixture(scope="module")
def tiny_colbert(tmp_path_factory, tiny_bert_dir) -> str:
    out = tmp_path_factory.mktemp("tiny_colbert") / "ckpt"
    colbert.init_checkpoint(tiny_bert_dir, out, dim=16, query_maxlen=16, doc_maxlen=32, seed=0)
    return str(out)


def _model(path: str, dropout: bool = False, dtype=torch.float32):
    model = colbert.load_student(path, query_maxlen=16, doc_maxlen=32).to(dtype)
    model.use_gpu = False
    model.train(dropout)
    return model


def _tokenizers(model):
    from colbert.modeling.tokenization import DocTokenizer, QueryTokenizer

    return QueryTokenizer(model.colbert_config), DocTokenizer(model.colbert_config)


def gradients(path: str, groups, *, micro_batch=None, contrastive="teacher", in_batch=True, dropout=False,
              seed=0, dtype=torch.float32) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    model = _model(path, dropout, dtype)
    qtok, dtok = _tokenizers(model)
    corpus, queries = _texts()
    batch = training.make_batch(groups, qtok, dtok, queries, corpus, NWAY, True)
    torch.manual_seed(seed)
    loss_fn = PairDistillLoss(lambda_kd=1.0, lambda_pair=3.0, temperature=1.0, use_labels=True)
    parts = training.batch_gradients(model, batch, loss_fn, contrastive_negatives=contrastive,
                                     in_batch_negatives=in_batch, use_labels=True, micro_batch=micro_batch)
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return grads, {k: float(v) for k, v in parts.items()}


def max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def assert_same_gradients(a: dict, b: dict, tol: float = 1e-5) -> None:
    """Equal to ``tol``, absolute and relative (|a - b| <= tol + tol |b|, as torch.allclose): the
    embeddings' gradient sums thousands of token terms, and fp32 rounds a sum of ~5 to ~1e-5 in
    either order (test_the_micro_batch_residue_is_fp32_rounding)."""
    bad = [k for k in a if not torch.allclose(a[k], b[k], rtol=tol, atol=tol)]
    assert not bad, {k: float((a[k] - b[k]).abs().max()) for k in bad}


# --- precision ---------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_maxsim_and_losses_run_in_fp32_for_half_precision_embeddings(dtype):
    torch.manual_seed(0)
    B, Lq, Ld, dim = 3, 5, 7, 16
    Q = torch.nn.functional.normalize(torch.randn(B, Lq, dim), dim=-1)
    D = torch.nn.functional.normalize(torch.randn(B * NWAY, Ld, dim), dim=-1)
    mask = torch.ones(B * NWAY, Ld, 1, dtype=torch.bool)
    mask[1, 4:] = False
    Dh = D.to(dtype)  # what colbert-ai's doc() returns on a GPU (fp16) or autocast hands over (bf16)
    wide, aligned = loop._maxsim(Q, Dh, mask), loop._maxsim_aligned(Q, Dh, mask, NWAY)
    assert wide.dtype == aligned.dtype == torch.float32
    # exactly the fp32 computation on the rounded embeddings: no half-precision sums anywhere
    assert torch.equal(wide, loop._maxsim(Q, Dh.float(), mask))
    assert torch.equal(aligned, loop._maxsim_aligned(Q, Dh.float(), mask, NWAY))
    both = loop._maxsim(Q.to(dtype), Dh, mask)
    assert both.dtype == torch.float32 and torch.equal(both, loop._maxsim(Q.to(dtype).float(), Dh.float(), mask))
    # the loss on half-precision scores: fp32, equal to the loss on the same scores in fp32
    scores = aligned.to(dtype).requires_grad_(True)
    teacher = torch.randn(B, NWAY)
    pairs, prob = torch.tensor([[0, 0, 1], [2, 1, 3]]), torch.tensor([0.7, 0.2])
    pos = torch.tensor([0, -1, 2])
    parts = PairDistillLoss()(scores, teacher, pairs, prob, positive_index=pos,
                              contrastive_scores=wide.to(dtype), contrastive_mask=None)
    ref = PairDistillLoss()(scores.detach().float(), teacher, pairs, prob, positive_index=pos,
                            contrastive_scores=wide.to(dtype).float())
    for k in parts:
        assert parts[k].dtype == torch.float32
        assert torch.equal(parts[k], ref[k]), k
    parts["loss"].backward()
    assert scores.grad.dtype == dtype and torch.isfinite(scores.grad.float()).all()


def test_precision_is_resolved_per_device():
    from pairdistill.errors import SettingError

    cpu = torch.device("cpu")
    assert training.resolve_precision("auto", cpu) == "fp32"
    assert training.resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(SettingError, match=r"^train.precision: fp16 needs a GPU"):
        training.resolve_precision("fp16", cpu)


def test_a_bf16_autocast_training_step_runs(tiny_colbert, tmp_path):
    corpus, queries = _texts()
    stats = training.train(tiny_colbert, tmp_path / "ckpt", tmp_path / "loss.parquet", corpus_texts=corpus,
                           query_texts=queries, groups=_groups(), nway=NWAY, batch_size=4, epochs=1, max_steps=2,
                           lr=1e-3, warmup=0.0, weight_decay=0.0, lambda_kd=1.0, lambda_pair=3.0, temperature=1.0,
                           use_labels=True, in_batch_negatives=True, query_maxlen=16, doc_maxlen=32, seed=0,
                           precision="bf16", micro_batch=2)
    assert stats["precision"] == "bf16" and stats["steps"] == 2
    assert np.isfinite(stats["first_loss"]) and np.isfinite(stats["last_loss"])
    assert (tmp_path / "ckpt" / "model.safetensors").exists()


def test_the_encoders_run_in_bf16_under_autocast(tiny_colbert):
    from accelerate import Accelerator

    model = _model(tiny_colbert)
    qtok, dtok = _tokenizers(model)
    corpus, queries = _texts()
    batch = training.make_batch(_groups()[:2], qtok, dtok, queries, corpus, NWAY, True)
    seen = []
    model.linear.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    acc = Accelerator(cpu=True, mixed_precision="bf16")
    training.batch_gradients(model, batch, PairDistillLoss(), in_batch_negatives=True, autocast=acc.autocast)
    assert seen and set(seen) == {torch.bfloat16}
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in model.parameters())


# --- micro-batches -------------------------------------------------------------------------------

@pytest.mark.parametrize("contrastive, in_batch, mined", [("teacher", True, 0), ("in_batch", False, 0),
                                                          ("mined", True, 2), ("teacher", False, 0)])
def test_four_micro_batches_give_the_full_batch_gradients(tiny_colbert, contrastive, in_batch, mined):
    groups = _groups(mined)
    full, lf = gradients(tiny_colbert, groups, contrastive=contrastive, in_batch=in_batch)
    micro, lm = gradients(tiny_colbert, groups, micro_batch=2, contrastive=contrastive, in_batch=in_batch)
    diff = max_abs_diff(full, micro)
    print(f"micro-batches ({contrastive}, in-batch {in_batch}, mined {mined}): max |grad diff| {diff:.2e}")
    assert_same_gradients(micro, full)
    assert lf == pytest.approx(lm, abs=1e-6) and lf["loss_cl"] > 0
    assert max(float(g.abs().max()) for g in full.values()) > 1e-3  # the gradients are not trivially zero


def test_the_micro_batch_residue_is_fp32_rounding(tiny_colbert):
    """In fp64 the gradient cache reproduces the full batch to 1e-10: what is left in fp32 is
    rounding, and the micro-batches' fp32 gradients are no further from the fp64 ones than the
    full batch's."""
    groups = _groups(2)
    full64, _ = gradients(tiny_colbert, groups, contrastive="mined", dtype=torch.float64)
    micro64, _ = gradients(tiny_colbert, groups, micro_batch=2, contrastive="mined", dtype=torch.float64)
    assert max_abs_diff(full64, micro64) < 1e-10
    full, _ = gradients(tiny_colbert, groups, contrastive="mined")
    micro, _ = gradients(tiny_colbert, groups, micro_batch=2, contrastive="mined")
    truth = {k: v.float() for k, v in full64.items()}
    print(f"fp32 gradients against fp64: full batch {max_abs_diff(full, truth):.2e}, "
          f"micro-batches {max_abs_diff(micro, truth):.2e}")
    assert max_abs_diff(micro, truth) <= 2 * max_abs_diff(full, truth) + 1e-6


def test_the_gradient_cache_replays_dropout(tiny_colbert):
    """Dropout on: the cache's gradients are those of the same micro-batches encoded with their
    graphs from the same RNG state (each re-encoding draws the masks of its first pass)."""
    groups = _groups()
    cached, _ = gradients(tiny_colbert, groups, micro_batch=3, dropout=True, seed=7)
    model = _model(tiny_colbert, dropout=True)
    qtok, dtok = _tokenizers(model)
    corpus, queries = _texts()
    batch = training.make_batch(groups, qtok, dtok, queries, corpus, NWAY, True)
    torch.manual_seed(7)
    Qs, Ds, Ms, rows = [], [], [], []
    for lo in range(0, BATCH, 3):
        hi = min(lo + 3, BATCH)
        r = batch.passage_rows(lo, hi)
        q, d, m = loop._encode(model, batch, lo, hi, r, contextlib.nullcontext)
        Qs.append(q), Ds.append(d), Ms.append(m), rows.append(r)
    order = torch.argsort(torch.cat(rows))
    Q, D, M = torch.cat(Qs), torch.cat(Ds)[order], torch.cat(Ms)[order]
    Qw, Dw, Mw, layout, whole = parallel._gather_batch(Q, D, M, batch)
    training.step_loss(Qw, Dw, Mw, layout, whole, PairDistillLoss(), in_batch_negatives=True)["loss"].backward()
    reference = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert_same_gradients(cached, reference)
    without_dropout, _ = gradients(tiny_colbert, groups, micro_batch=3, dropout=False)
    assert max_abs_diff(cached, without_dropout) > 1e-4  # dropout was on


def test_in_batch_contrast_is_the_positive_against_other_queries_passages_only(tiny_colbert):
    """contrastive_negatives in_batch: L_CL of a row is CE over its positive and every passage of
    the other queries (its own other passages left out), as the authors' colbert-ai compute_ib_loss."""
    model = _model(tiny_colbert)
    qtok, dtok = _tokenizers(model)
    corpus, queries = _texts()
    groups = _groups()
    batch = training.make_batch(groups, qtok, dtok, queries, corpus, NWAY, True)
    with torch.no_grad():
        Q, D, M = loop._encode(model, batch, 0, BATCH, torch.arange(BATCH * NWAY), contextlib.nullcontext)
        Qw, Dw, Mw, layout, whole = parallel._gather_batch(Q, D, M, batch)
        parts = training.step_loss(Qw, Dw, Mw, layout, whole, PairDistillLoss(), contrastive_negatives="in_batch")
        wide = loop._maxsim(Q, D, M)
    terms = []
    for b, g in enumerate(groups):
        if g.positive_index < 0:
            continue
        cols = [b * NWAY + g.positive_index] + [c for c in range(BATCH * NWAY) if c // NWAY != b]
        terms.append(-torch.log_softmax(wide[b, cols], 0)[0])
    assert float(parts["loss_cl"]) == pytest.approx(float(torch.stack(terms).mean()), rel=1e-5)


# --- several processes -----------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, path: str, out: str, micro_batch, contrastive, mined):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        share = _groups(mined)[rank * BATCH // world:(rank + 1) * BATCH // world]
        grads, parts = gradients(path, share, micro_batch=micro_batch, contrastive=contrastive)
        torch.save({"grads": grads, "parts": parts}, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two processes on gloo
@pytest.mark.parametrize("micro_batch, contrastive, mined", [(None, "teacher", 0), (2, "mined", 2)])
def test_two_processes_give_one_process_gradients(tiny_colbert, tmp_path, micro_batch, contrastive, mined):
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(2, _free_port(), tiny_colbert, str(tmp_path), micro_batch, contrastive, mined),
             nprocs=2, join=True)
    one, parts = gradients(tiny_colbert, _groups(mined), contrastive=contrastive)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        diff = max_abs_diff(one, got["grads"])
        print(f"2 processes (micro_batch {micro_batch}, {contrastive}), rank {rank}: max |grad diff| {diff:.2e}")
        assert_same_gradients(got["grads"], one)
        assert got["parts"] == pytest.approx(parts, abs=1e-5)


@pytest.mark.slow  # three two-process training runs, one killed
def test_two_process_training_killed_and_rerun_is_bit_identical(tmp_path_factory, tiny_bert_dir):
    """``--processes 2`` through the job's own launcher (torch.distributed.run; gloo on CPU): each
    process reads only its share of the queries; a run SIGKILLed mid-way and rerun resumes from the
    state every process's data position and RNGs went into, and ends bit-identical to an
    uninterrupted run."""
    import re

    import pandas as pd
    import test_train_resume as resume

    from pairdistill import io

    root = tmp_path_factory.mktemp("dp_resume")
    inputs = resume.make_inputs(root / "inputs")
    inputs["checkpoint"] = root / "ckpt0"
    colbert.init_checkpoint(tiny_bert_dir, inputs["checkpoint"], dim=16, query_maxlen=16, doc_maxlen=32, seed=0)
    ref, killed = root / "uninterrupted", root / "killed"
    ref.mkdir(), killed.mkdir()
    cmds = {}
    for work in (ref, killed):
        cmd = resume._command(inputs, work, steps=16) + ["--processes", "2", "--micro-batch", "1"]
        cmds[work] = cmd
    first = resume._run(cmds[ref], ref / "train.log")
    assert "process 0 of 2: " in first and "process 1 of 2: " in first and "(2 processes of 1)" in first
    shares = [int(m.group(1)) for m in re.finditer(r"process \d of 2: (\d+) of 11 queries", first)]
    assert sum(shares) == 11  # each query read by one process
    # killed (the launcher and both processes) right after its 4th state, step 8 of 16
    step = resume._run_and_kill(cmds[killed], killed / "first.log", killed / "train_state", 4)
    assert step == 4 * resume.SAVE_EVERY
    second = resume._run(cmds[killed], killed / "second.log")
    assert re.search(r"resuming from step (\d+)", second), second[-3000:]
    a, b = resume._weights(ref / "checkpoint"), resume._weights(killed / "checkpoint")
    assert all(torch.equal(a[k], b[k]) for k in a), "weights differ after the resume"
    la = io.read_table(ref / "train_loss.parquet", "loss").drop(columns="elapsed_s")
    lb = io.read_table(killed / "train_loss.parquet", "loss").drop(columns="elapsed_s")
    pd.testing.assert_frame_equal(la, lb, check_exact=True)
    assert not (killed / "train_state").exists()


# --- mined negatives ---------------------------------------------------------------------------------

def test_mined_negatives_from_parquet_or_dragon_lines_are_drawn_per_query(tmp_path):
    import json

    import pandas as pd

    from pairdistill import stages

    run = pd.DataFrame({"query_id": ["q0"] * 4 + ["q1"] * 2, "doc_id": ["a", "b", "c", "d", "x", "y"],
                        "rank": [2, 1, 3, 4, 1, 2], "score": [1.0] * 6})
    run.to_parquet(tmp_path / "negatives.parquet")
    with open(tmp_path / "dragon.jsonl", "w") as f:
        f.write(json.dumps({"query_id": "q0", "question": "?", "positive_ctxs": [{"docidx": "p"}],
                            "hard_negative_ctxs": [{"docidx": d} for d in "bacd"]}) + "\n")
        f.write(json.dumps({"query_id": "q1", "hard_negative_ctxs": [{"docidx": "x"}, {"docidx": "y"}]}) + "\n")
    parquet = stages.read_negatives(str(tmp_path / "negatives.parquet"))
    dragon = stages.read_negatives(str(tmp_path / "dragon.jsonl"), ["q0", "q1", "q9"])
    assert parquet == dragon == {"q0": ["b", "a", "c", "d"], "q1": ["x", "y"]}  # in rank order
    groups = [training.Group("q0", ["p", "n"], [1.0, 0.0], 0), training.Group("q1", ["r", "n"], [1.0, 0.0], 0),
              training.Group("q2", ["s", "n"], [1.0, 0.0], 0), training.Group("q3", ["t", "n"], [1.0, 0.0], -1)]
    stats = stages.draw_negatives(groups, parquet, {"q0": {"p", "c"}}, per_query=3, seed=1)
    assert len(groups[0].negatives) == 3 and set(groups[0].negatives) <= {"a", "b", "d"}  # labelled positive c left out
    assert sorted(groups[1].negatives) in (["x", "x", "y"], ["x", "y", "y"])  # two, repeated to three
    assert groups[2].negatives == [] and groups[3].negatives == []  # none mined; unlabelled
    assert stats == {"mined_per_query": 3, "labelled_without_mined": 1, "mined_repeated": 1}
    again = [training.Group("q0", ["p", "n"], [1.0, 0.0], 0)]
    stages.draw_negatives(again, parquet, {"q0": {"p", "c"}}, per_query=3, seed=1)
    assert again[0].negatives == groups[0].negatives  # per query, seeded


def test_maxsim_in_chunks_of_queries_is_the_same(monkeypatch):
    torch.manual_seed(0)
    Q = torch.randn(5, 4, 8, requires_grad=True)
    D = torch.randn(12, 6, 8, requires_grad=True)
    mask = torch.rand(12, 6, 1) > 0.3
    whole = loop._maxsim(Q, D, mask)
    g_whole = torch.autograd.grad(whole.square().sum(), [Q, D])
    monkeypatch.setattr(loop, "MAXSIM_CHUNK_BYTES", 2 * 12 * 4 * 6 * 4)  # two queries at a time
    chunked = loop._maxsim(Q, D, mask)
    g_chunked = torch.autograd.grad(chunked.square().sum(), [Q, D])
    assert torch.allclose(whole, chunked, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(g_whole, g_chunked))
