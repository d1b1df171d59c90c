"""Preemption: a training job killed with SIGKILL and rerun ends bit-identical to an uninterrupted one.

The runs go through ``python -m pairdistill train`` in subprocesses, as the Snakemake rule runs
them, on a tiny random ColBERT with dropout active, unlabelled queries kept and in-batch
negatives on, so every source of randomness and every loss path is exercised across the resume.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pairdistill import io
from pairdistill.students import colbert
from pairdistill import train as training

REPO = Path(__file__).resolve().parents[1]
SPLIT = "train"
N_QUERIES, N_LABELLED, LIST_LEN, NWAY, BATCH = 11, 8, 6, 4, 2  # 6 steps per epoch, the last one of 1 query
STEPS, SAVE_EVERY, KILL_AFTER = 24, 2, 5  # killed right after its 5th state (step 10) of 24 steps


def _words(rng: np.random.Generator, n: int) -> str:
    vocab = ["protein", "cell", "gene", "virus", "dose", "trial", "risk", "brain", "heart", "blood",
             "mouse", "human", "therapy", "signal", "pathway", "tumour", "immune", "growth", "effect", "study"]
    return " ".join(rng.choice(vocab, size=n))


def _write(df: pd.DataFrame, name: str, path: Path) -> None:
    """Write an artifact; columns of its schema this test does not care about (e.g. ``cached``)
    get a neutral default, so the test follows additive schema changes."""
    import pyarrow as pa

    for field in io.schema(name):
        if field.name not in df.columns:
            df[field.name] = (False if pa.types.is_boolean(field.type) else
                              "" if pa.types.is_string(field.type) else 0)
    io.write_table(df, name, path)


def make_inputs(root: Path) -> dict[str, Path]:
    """Corpus, queries (8 labelled + 3 unlabelled), qrels, pointwise lists and pairwise probabilities."""
    rng = np.random.default_rng(7)
    root.mkdir(parents=True, exist_ok=True)
    docs = [f"d{i:03d}" for i in range(N_QUERIES * LIST_LEN)]
    corpus = pd.DataFrame({"doc_id": docs, "title": [_words(rng, 2) for _ in docs],
                           "text": [_words(rng, int(rng.integers(8, 20))) for _ in docs]})
    qids = [f"q{i:02d}" for i in range(N_QUERIES)]
    queries = pd.DataFrame({"split": SPLIT, "query_id": qids, "text": [_words(rng, 4) for _ in qids]})
    point, pair, qrels = [], [], []
    for n, q in enumerate(qids):
        mine = docs[n * LIST_LEN:(n + 1) * LIST_LEN]
        scores = np.sort(rng.normal(size=LIST_LEN))[::-1]
        for r, (d, s) in enumerate(zip(mine, scores), start=1):
            point.append((q, d, r, float(LIST_LEN - r), float(s), r))
        if n < N_LABELLED:
            qrels.append((SPLIT, q, mine[int(rng.integers(0, LIST_LEN))], 1))
        for a, b in ((0, 1), (1, 3), (2, 4)):
            p = float(rng.uniform(0.05, 0.95))
            pair.append((q, mine[a], mine[b], a + 1, b + 1, p, 1 - p, p))
    paths = {name: root / f"{name}.parquet" for name in ("corpus", "queries", "qrels", "pointwise", "pairwise")}
    _write(corpus, "corpus", paths["corpus"])
    _write(queries, "queries", paths["queries"])
    _write(pd.DataFrame(qrels, columns=["split", "query_id", "doc_id", "relevance"]), "qrels", paths["qrels"])
    pw = pd.DataFrame(point, columns=["query_id", "doc_id", "retriever_rank", "retriever_score", "teacher_score",
                                      "teacher_rank"])
    _write(pw, "pointwise", paths["pointwise"])
    _write(pd.DataFrame(pair, columns=["query_id", "doc_a", "doc_b", "rank_a", "rank_b", "p_ab", "p_ba",
                                               "prob"]), "pairwise", paths["pairwise"])
    return paths


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_bert_dir):
    root = tmp_path_factory.mktemp("resume_inputs")
    paths = make_inputs(root)
    paths["checkpoint"] = root / "ckpt0"
    colbert.init_checkpoint(tiny_bert_dir, paths["checkpoint"], dim=16, query_maxlen=16, doc_maxlen=32, seed=0)
    return paths


def _command(inputs: dict[str, Path], work: Path, steps: int = STEPS) -> list[str]:
    return [sys.executable, "-m", "pairdistill", "--threads", "1", "train",
            "--checkpoint", str(inputs["checkpoint"]), "--corpus", str(inputs["corpus"]),
            "--queries", str(inputs["queries"]), "--qrels", str(inputs["qrels"]),
            "--pointwise", str(inputs["pointwise"]), "--pairwise", str(inputs["pairwise"]),
            "--out", str(work / "checkpoint"), "--loss-out", str(work / "train_loss.parquet"),
            "--split", SPLIT, "--nway", str(NWAY), "--batch-size", str(BATCH), "--epochs", "1000",
            "--max-steps", str(steps), "--lr", "3e-4", "--warmup", "0.1", "--weight-decay", "0.01",
            "--lambda-kd", "1.0", "--lambda-pair", "3.0", "--temperature", "1.0", "--use-labels", "true",
            "--unlabelled-queries", "true", "--in-batch-negatives", "true",
            "--query-maxlen", "16", "--doc-maxlen", "32", "--seed", "3",
            "--state-dir", str(work / "train_state"), "--save-every", str(SAVE_EVERY)]


def _env() -> dict[str, str]:
    from pairdistill import preemption

    env = {k: v for k, v in os.environ.items() if k not in (preemption.ENV, preemption.GROUP_ENV)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
    return env


def _start(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """``cmd`` in a session of its own (so a kill takes every process it starts)."""
    with open(log, "w") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env={**_env(), **(env or {})},
                                cwd=REPO, start_new_session=True)


def _finish(proc: subprocess.Popen, log: Path, timeout_s: float = 300.0) -> str:
    try:
        proc.wait(timeout=timeout_s)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = log.read_text()
    assert proc.returncode == 0, f"training failed ({proc.returncode}):\n{text[-3000:]}"
    return text


def _run(cmd: list[str], log: Path) -> str:
    return _finish(_start(cmd, log), log)


def _state_step(state_dir: Path) -> int:
    steps = [int(m.group(1)) for p in state_dir.glob("step-*") if (m := re.fullmatch(r"step-(\d+)", p.name))]
    return max(steps, default=0)


def _run_and_kill(cmd: list[str], log: Path, state_dir: Path, at_state: int, timeout_s: float = 300.0) -> int:
    """Run ``cmd`` with PAIRDISTILL_KILL_AFTER=train:<at_state>: the job SIGKILLs its whole session
    (every process of it) right after its ``at_state``-th training state is durable, wherever the
    machine's load has got the run to; returns the step of the state it left."""
    from pairdistill import preemption

    proc = _start(cmd, log, {preemption.ENV: f"train:{at_state}"})
    try:
        proc.wait(timeout=timeout_s)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = log.read_text()
    assert proc.returncode == -signal.SIGKILL, (
        f"training exited by itself ({proc.returncode}) instead of being killed:\n{text[-3000:]}")
    assert f"{preemption.ENV}: killing process group" in text, text[-3000:]
    return _state_step(state_dir)


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(checkpoint / "model.safetensors")


@pytest.mark.slow  # three training processes, one killed
def test_killed_and_rerun_training_is_bit_identical_to_an_uninterrupted_one(inputs, tmp_path):
    started = time.monotonic()
    ref, killed = tmp_path / "uninterrupted", tmp_path / "killed"
    ref.mkdir()
    killed.mkdir()
    # the uninterrupted run goes alongside the killed one (one thread each)
    ref_proc = _start(_command(inputs, ref), ref / "train.log")
    try:
        cmd = _command(inputs, killed)
        step = _run_and_kill(cmd, killed / "first.log", killed / "train_state", KILL_AFTER)
    finally:
        ref_log = _finish(ref_proc, ref / "train.log")
    assert "resuming" not in ref_log
    assert not (ref / "train_state").exists(), "a completed run must remove its state directory"
    assert step == KILL_AFTER * SAVE_EVERY  # the state the cue named, under any load
    # the killed job left none of its declared outputs, only its state
    assert not (killed / "checkpoint").exists() and not (killed / "train_loss.parquet").exists()
    left = _state_step(killed / "train_state")
    assert left == step, left

    second = _run(cmd, killed / "second.log")
    m = re.search(r"resuming from step (\d+)", second)
    assert m, f"the rerun did not resume:\n{second[-3000:]}"
    assert int(m.group(1)) == left > 0
    assert not (killed / "train_state").exists(), "the resumed run must remove its state directory"
    assert sorted(p.name for p in killed.iterdir()) == ["checkpoint", "first.log", "second.log",
                                                       "train_loss.parquet"]

    a, b = _weights(ref / "checkpoint"), _weights(killed / "checkpoint")
    assert a.keys() == b.keys()
    unequal = [k for k in a if not torch.equal(a[k], b[k])]
    assert not unequal, f"weights differ after the resume: {unequal[:5]}"
    # the checkpoint moved away from its start (training happened, dropout and all)
    start = _weights(inputs["checkpoint"])
    assert any(not torch.equal(a[k], start[k]) for k in a)

    la = io.read_table(ref / "train_loss.parquet", "loss")
    lb = io.read_table(killed / "train_loss.parquet", "loss")
    cols = [c for c in la.columns if c != "elapsed_s"]
    assert len(la) == STEPS and la["step"].tolist() == list(range(STEPS))
    pd.testing.assert_frame_equal(la[cols], lb[cols], check_exact=True)
    assert (la["loss_cl"] > 0).any() and (la["loss_pair"] > 0).all()
    print(f"resume test: killed at step {step}, resumed from {left}, {time.monotonic() - started:.1f}s")


# --- in-process: the state's fingerprint --------------------------------------------------------

def _groups(inputs):
    qrels = io.read_table(inputs["qrels"], "qrels")
    positives = qrels.groupby("query_id")["doc_id"].apply(set).to_dict()
    return training.build_groups(io.read_table(inputs["pointwise"], "pointwise"),
                                 io.read_table(inputs["pairwise"], "pairwise"), positives, nway=NWAY,
                                 use_labels=True, seed=0, unlabelled_queries=True)[0]


def _texts(inputs):
    corpus = io.read_table(inputs["corpus"], "corpus")
    queries = io.read_table(inputs["queries"], "queries")
    return (dict(zip(corpus["doc_id"], corpus["title"] + " " + corpus["text"])),
            dict(zip(queries["query_id"], queries["text"])))


def _train(inputs, work: Path, **overrides):
    corpus_texts, query_texts = _texts(inputs)
    kw = dict(corpus_texts=corpus_texts, query_texts=query_texts, groups=_groups(inputs), nway=NWAY,
              batch_size=BATCH, epochs=10, max_steps=6, lr=3e-4, warmup=0.1, weight_decay=0.0, lambda_kd=1.0,
              lambda_pair=3.0, temperature=1.0, use_labels=True, in_batch_negatives=False, query_maxlen=16,
              doc_maxlen=32, seed=1, state_dir=work / "state", save_every=2)
    kw.update(overrides)
    return training.train(str(inputs["checkpoint"]), work / "ckpt", work / "loss.parquet", **kw)


def _interrupted(inputs, work: Path, monkeypatch, **overrides) -> None:
    """A run that dies after its last step, before writing outputs: it leaves its latest state."""
    def die(*a, **k):
        raise KeyboardInterrupt("preempted")

    with monkeypatch.context() as m:
        m.setattr(colbert, "save_student", die)
        with pytest.raises(KeyboardInterrupt):
            _train(inputs, work, **overrides)


def test_a_state_of_other_hyperparameters_is_deleted_not_resumed(inputs, tmp_path, monkeypatch, capsys):
    _interrupted(inputs, tmp_path, monkeypatch)
    assert [p.name for p in (tmp_path / "state").iterdir()] == ["step-000000004"]
    capsys.readouterr()
    stats = _train(inputs, tmp_path, lr=1e-4)
    out = capsys.readouterr().out
    assert "resuming" not in out and stats["resumed_from_step"] is None
    assert re.search(r"ignoring training state .*step-000000004.*hyperparameters \['lr'\].*deleting it", out), out
    assert not (tmp_path / "state").exists()
    assert io.read_table(tmp_path / "loss.parquet", "loss")["step"].tolist() == list(range(6))


def test_a_state_of_other_groups_is_not_resumed_but_a_matching_one_is(inputs, tmp_path, monkeypatch, capsys,
                                                                       one_thread):
    _interrupted(inputs, tmp_path, monkeypatch)
    groups = _groups(inputs)
    groups[0].teacher_scores = [s + 1.0 for s in groups[0].teacher_scores]  # e.g. a re-scored pointwise file
    capsys.readouterr()
    _interrupted(inputs, tmp_path, monkeypatch, groups=groups)
    out = capsys.readouterr().out
    assert "resuming" not in out and "groups_digest" in out
    # the state now left is the changed groups' run; the same run resumes from it, bit-exactly
    stats = _train(inputs, tmp_path, groups=groups)
    assert stats["resumed_from_step"] == 4 and "resuming from step 4" in capsys.readouterr().out
    ref = tmp_path / "ref"
    _train(inputs, ref, groups=groups, state_dir=None)
    a, b = _weights(tmp_path / "ckpt"), _weights(ref / "ckpt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    cols = ["step", "loss", "loss_cl", "loss_kd", "loss_pair", "lr"]
    pd.testing.assert_frame_equal(io.read_table(tmp_path / "loss.parquet", "loss")[cols],
                                  io.read_table(ref / "loss.parquet", "loss")[cols], check_exact=True)


def test_a_state_dir_with_other_files_is_kept_but_emptied_of_states(inputs, tmp_path):
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "notes.txt").write_text("not ours")
    (tmp_path / "state" / ".step-000000002.abc.tmp").mkdir()  # a save killed half-way
    _train(inputs, tmp_path, max_steps=3)
    assert [p.name for p in (tmp_path / "state").iterdir()] == ["notes.txt"]
