"""The paper's models named by hub id, served offline from a local Hugging Face cache.

No hub is reachable here, so tiny models of the same architectures are built locally and put in a
cache laid out as huggingface_hub lays it out (models--org--name/snapshots/<commit>/, refs/main).
Each stage then runs in a fresh process with HF_HUB_CACHE pointing there, as on a cluster whose
cache was filled beforehand.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from pairdistill import io
from pairdistill.students import colbert

REPO = Path(__file__).resolve().parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _cache(hub: Path, repo_id: str, source: str) -> None:
    base = hub / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(source, base / "snapshots" / COMMIT)
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(COMMIT)


@pytest.fixture(scope="module")
def hub(tmp_path_factory, tiny_cross_encoder_dir, tiny_t5_dir, tiny_bert_dir, tiny_flan_t5_dir):
    root = tmp_path_factory.mktemp("hf")
    ckpt = root / "tiny-colbert"
    colbert.init_checkpoint(tiny_bert_dir, ckpt, dim=16, query_maxlen=8, doc_maxlen=24, seed=0)
    cache = root / "hub"
    _cache(cache, "cross-encoder/ms-marco-MiniLM-L-6-v2", tiny_cross_encoder_dir)
    _cache(cache, "castorini/duot5-3b-msmarco", tiny_t5_dir)
    _cache(cache, "colbert-ir/colbertv2.0", str(ckpt))
    _cache(cache, "google/flan-t5-xl", tiny_flan_t5_dir)
    return cache


def _run(hub: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "src"),
           "TORCH_EXTENSIONS_DIR": str(REPO / ".cache" / "torch_extensions")}
    return subprocess.run([sys.executable, "-m", "pairdistill", "--threads", "1", *args], cwd=cwd, env=env,
                          capture_output=True, text=True)


def _inputs(d: Path) -> None:
    io.write_table(pd.DataFrame({"doc_id": ["d1", "d2", "d3"], "title": "",
                                 "text": ["vitamin d and bones", "solar wind", "bone density in adults"]}),
                   "corpus", d / "corpus.parquet")
    io.write_table(pd.DataFrame({"split": "train", "query_id": ["q1"], "text": ["vitamin d bone density"]}),
                   "queries", d / "queries.parquet")
    io.write_table(pd.DataFrame({"split": "train", "query_id": ["q1"], "doc_id": ["d1"], "relevance": [1]}),
                   "qrels", d / "qrels.parquet")
    io.write_table(pd.DataFrame({"query_id": "q1", "doc_id": ["d1", "d2", "d3"], "rank": [1, 2, 3],
                                 "score": [3.0, 2.0, 1.0]}).astype({"rank": "int32", "score": "float32"}),
                   "run", d / "topk.parquet")


def _pointwise(hub: Path, model: str, cwd: Path, *extra: str) -> subprocess.CompletedProcess:
    _inputs(cwd)
    return _run(hub, "pointwise", "--topk", "topk.parquet", "--corpus", "corpus.parquet", "--queries",
                "queries.parquet", "--qrels", "qrels.parquet", "--out", "pointwise.parquet", "--split", "train",
                "--model", model, "--max-length", "32", "--batch-size", "4", *extra, cwd=cwd)


def test_teachers_by_hub_id_score_and_record_their_snapshot(hub, tmp_path):
    proc = _pointwise(hub, "cross-encoder/ms-marco-MiniLM-L-6-v2", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    scores = io.read_table(tmp_path / "pointwise.parquet", "pointwise")
    assert len(scores) == 3 and scores["teacher_score"].notna().all()
    teacher = json.loads(io.read_metadata(tmp_path / "pointwise.parquet")["teacher"])
    assert teacher["family"] == "cross-encoder" and len(teacher["fingerprint"]) == 64

    io.write_table(pd.DataFrame({"query_id": ["q1"], "doc_a": ["d1"], "doc_b": ["d3"], "rank_a": [1], "rank_b": [2],
                                 "n_candidates": [3], "n_sampled": [1]}), "pairs", tmp_path / "pairs.parquet")
    proc = _run(hub, "pairwise", "--pairs", "pairs.parquet", "--corpus", "corpus.parquet", "--queries",
                "queries.parquet", "--out", "pairwise.parquet", "--model", "castorini/duot5-3b-msmarco",
                "--max-length", "64", "--batch-size", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(io.read_metadata(tmp_path / "pairwise.parquet")["teacher"])["family"] == "duot5"


def test_flan_t5_by_hub_id_is_the_papers_instruction_teacher(hub, tmp_path):
    """google/flan-t5-xl from the cache, prompted with the paper's pointwise prompt (family explicit:
    "auto" takes a T5 for monoT5)."""
    from pairdistill.teachers.instruct import DEFAULT_PROMPT

    proc = _pointwise(hub, "google/flan-t5-xl", tmp_path, "--family", "instruct-pointwise")
    assert proc.returncode == 0, proc.stderr[-3000:]
    scores = io.read_table(tmp_path / "pointwise.parquet", "pointwise")
    assert len(scores) == 3 and (scores["teacher_score"] < 0).all()  # log P(Yes)
    teacher = json.loads(io.read_metadata(tmp_path / "pointwise.parquet")["teacher"])
    assert teacher["family"] == "instruct-pointwise" and teacher["prompt"] == DEFAULT_PROMPT["pointwise"]
    assert teacher["labels"] == ["Yes", "No"] and len(teacher["fingerprint"]) == 64


def test_colbertv2_by_hub_id_becomes_the_iteration_0_checkpoint(hub, tmp_path):
    proc = _run(hub, "init-checkpoint", "--base", "colbert-ir/colbertv2.0", "--out", "ckpt", "--dim", "16",
                "--query-maxlen", "8", "--doc-maxlen", "24", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from safetensors.torch import load_file

    got = load_file(tmp_path / "ckpt" / "model.safetensors")
    want = load_file(hub / "models--colbert-ir--colbertv2.0" / "snapshots" / COMMIT / "model.safetensors")
    # the hub checkpoint's own projection is kept, not re-initialised
    assert got.keys() == want.keys() and all((got[k] == want[k]).all() for k in got)


def test_missing_hub_model_is_one_clear_line(hub, tmp_path):
    proc = _pointwise(hub, "cross-encoder/ms-marco-MiniLM-L-12-v2", tmp_path)
    assert proc.returncode == 2
    assert "cross-encoder/ms-marco-MiniLM-L-12-v2" in proc.stderr and "not found" in proc.stderr
    assert not (tmp_path / "pointwise.parquet").exists()
