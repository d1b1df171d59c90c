"""Start-up checks of the workflow (config schema, data directory, model paths) and the CLI's
one-line errors, all before any model work."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from workflow import DATA_DIR, REPO, drop_inference_flags, snakemake, write_config


def _dry(tmp_path, overlay):
    cfg = write_config(tmp_path / "overlay.yaml", overlay)
    proc = snakemake(tmp_path, "-n", configfiles=(cfg,), check=False)
    return proc.returncode, proc.stdout + proc.stderr


def test_default_config_plans_the_whole_dag(tmp_path):
    code, out = _dry(tmp_path, {"data_dir": str(DATA_DIR)})
    assert code == 0, out
    for rule, count in {"prepare": 1, "init_checkpoint": 1, "index": 3, "evaluate": 3, "retrieve": 2,
                        "pointwise": 2, "sample_pairs": 2, "pairwise": 2, "train": 2, "fit_fusion_pointwise": 1,
                        "fit_fusion_pairwise": 1, "rerank_teacher": 2, "rerank_plain_fusion": 1,
                        "pair_accuracy": 1, "corpus_baselines": 1, "gather": 8, "summary": 1}.items():
        assert any(line.split() == [rule, str(count)] for line in out.splitlines()), (rule, out[-2000:])
    # the fusion teachers need no mined negatives and no cross-encoder fitting
    assert "mine_negatives" not in out and "fit_teacher " not in out


def test_classic_fitted_teachers_plan_mining_and_fitting(tmp_path):
    code, out = _dry(tmp_path, {"data_dir": str(DATA_DIR), "teachers": {
        "pointwise": {"fit": {"method": "cross-encoder"}}, "pairwise": {"fit": {"method": "bert-pairwise"}}}})
    assert code == 0, out
    for rule, count in {"fit_teacher": 2, "mine_negatives": 1, "pair_accuracy": 1}.items():
        assert any(line.split() == [rule, str(count)] for line in out.splitlines()), (rule, out[-2000:])
    assert "fit_fusion" not in out and "rerank_plain_fusion" not in out


@pytest.mark.parametrize("overlay, line", [
    ({"pointwise": {"family": "duot5"}},
     "teachers.pointwise.family: 'duot5' cannot score pointwise (a pairwise family); expected one of"),
    ({"pairwise": {"family": "fusion"}},
     "teachers.pairwise.family: 'fusion' cannot score pairwise (a pointwise family); expected one of"),
    ({"pairwise": {"family": "colbert"}}, "teachers.pairwise.family: 'colbert' cannot score pairwise (unknown)"),
    ({"pointwise": {"fit": {"method": "fusion-pairwise"}}},
     "teachers.pointwise.fit.method: 'fusion-pairwise' cannot fit a pointwise teacher (fits a pairwise teacher)"),
    ({"pointwise": {"fit": {"method": "cross-encoder"}}},
     "teachers.pairwise.fit.method: fusion-pairwise builds on the fusion pointwise teacher"),
])
def test_teacher_that_cannot_score_its_kind_is_one_line(tmp_path, overlay, line):
    code, out = _dry(tmp_path, {"data_dir": str(DATA_DIR), "teachers": overlay})
    assert code != 0
    hits = [x for x in out.splitlines() if line in x]
    assert hits, out[-2000:]


def test_unknown_key_is_named(tmp_path):
    code, out = _dry(tmp_path, {"data_dir": str(DATA_DIR), "train": {"lamda_pair": 3.0}})
    assert code != 0
    assert "lamda_pair" in out


def test_wrong_type_is_named(tmp_path):
    code, out = _dry(tmp_path, {"data_dir": str(DATA_DIR), "pairs": {"delta": "ten"}})
    assert code != 0
    assert "delta" in out and "ten" in out


def test_missing_data_directory(tmp_path):
    code, out = _dry(tmp_path, {"data_dir": str(tmp_path / "nowhere")})
    assert code != 0
    assert f"data directory {tmp_path / 'nowhere'} does not exist" in out


def test_data_directory_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("PAIRDISTILL_DATA_DIR", str(tmp_path / "elsewhere"))
    code, out = _dry(tmp_path, {})
    assert code != 0 and str(tmp_path / "elsewhere") in out


def test_missing_model_path_is_named(tmp_path):
    code, out = _dry(tmp_path, {"data_dir": str(DATA_DIR),
                                "teachers": {"pairwise": {"model": str(tmp_path / "duot5")}}})
    assert code != 0
    assert f"model path {tmp_path / 'duot5'} does not exist (config key: teachers.pairwise.model)" in out


def test_cli_reports_bad_input_in_one_line(tmp_path):
    ds = tmp_path / "data" / "bad"
    (ds / "qrels").mkdir(parents=True)
    (ds / "corpus.jsonl").write_text(json.dumps({"_id": "d1", "title": "", "text": "a"}) + "\n"
                                     + json.dumps({"_id": "d1", "title": "", "text": "b"}) + "\n")
    (ds / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "x"}) + "\n")
    (ds / "qrels" / "train.tsv").write_text("q1\td1\t1\n")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run([sys.executable, "-m", "pairdistill", "prepare", "--data-dir", str(tmp_path / "data"),
                           "--dataset", "bad", "--splits", "train", "--out-dir", str(tmp_path / "out")],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert f"{ds / 'corpus.jsonl'}:2:" in errors[0] and "d1" in errors[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("stage", ["pointwise", "pairwise"])
def test_cli_missing_teacher_path(tmp_path, stage):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    args = [sys.executable, "-m", "pairdistill", stage, "--corpus", "c", "--queries", "q", "--out", "o",
            "--model", str(tmp_path / "missing"), "--max-length", "32", "--batch-size", "2"]
    args += (["--topk", "t", "--qrels", "r", "--split", "train"] if stage == "pointwise" else ["--pairs", "p"])
    proc = subprocess.run(args, capture_output=True, text=True, env=env)
    assert proc.returncode == 2
    assert f"error: {tmp_path / 'missing'}: model path does not exist" in proc.stderr.splitlines()


def test_cross_pair_features_reach_the_pairwise_fit_only_when_set(tmp_path):
    def fit_command(overlay):
        cfg = write_config(tmp_path / "overlay.yaml", {"data_dir": str(DATA_DIR), **overlay})
        out = snakemake(tmp_path, "-n", "-p", configfiles=(cfg,)).stdout
        return next(line for line in out.splitlines() if "fit-fusion --kind pairwise" in line)

    assert "--pair-features" not in fit_command({})  # the default's command, and so its finished fit, as before
    cross = fit_command({"teachers": {"pairwise": {"fit": {"pair_features": "cross"}}}})
    assert " --seed 13 --pair-features cross > " in drop_inference_flags(cross)
    cfg = write_config(tmp_path / "bad.yaml", {"data_dir": str(DATA_DIR),
                                               "teachers": {"pairwise": {"fit": {"pair_features": "squares"}}}})
    proc = snakemake(tmp_path, "-n", configfiles=(cfg,), check=False)
    assert proc.returncode != 0 and "'squares' is not one of ['margin', 'cross']" in proc.stdout + proc.stderr
