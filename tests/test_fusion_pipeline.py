"""The DAG with the embedded default's fusion teachers, one round on a SciFact slice with a tiny
random BERT: the teachers are fitted once without the student, score every stage, and are
reported as Table 5 asks (reranking, pair accuracy) next to the plain fusion and first-stage
baselines."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pairdistill import io

from workflow import DATA_DIR, dry_run, snakemake, write_config

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (DATA_DIR / "scifact").is_dir(), reason="SciFact not found")]


@pytest.fixture(scope="module")
def run(fusion_run):
    return fusion_run  # conftest.py's session-wide run, shared with test_report_browser.py


def test_teachers_are_fitted_without_the_student(run):
    w = run["workdir"]
    assert not (w / "results/teachers/negatives.parquet").exists()  # nothing mined by iteration 0
    for kind, family in (("pointwise", "fusion"), ("pairwise", "fusion-pairwise")):
        meta = json.loads((w / f"results/teachers/{kind}/model/pairdistill_teacher.json").read_text())
        assert meta["family"] == family
    assert not list((w / "results/teachers").glob(".*work*"))  # the fit's scratch directory is gone


def test_fusion_scores_feed_the_round(run):
    w = run["workdir"]
    pointwise = io.read_table(w / "results/iter-1/pointwise.parquet", "pointwise")
    assert np.isfinite(pointwise["teacher_score"]).all()
    assert json.loads(io.read_metadata(w / "results/iter-1/pointwise.parquet")["teacher"])["family"] == "fusion"
    pairwise = io.read_table(w / "results/iter-1/pairwise.parquet", "pairwise")
    # the fusion pairwise teacher is antisymmetric: both orders agree exactly
    np.testing.assert_allclose(pairwise["p_ab"], 1 - pairwise["p_ba"].astype(float), atol=1e-6)


def test_summary_has_table_5_and_the_baselines(run):
    summary = pd.read_parquet(run["workdir"] / "results/summary.parquet").set_index("system")
    assert "pointwise teacher (top-8 of iteration 0)" in summary.index
    assert "pairwise teacher (top-3 of the pointwise teacher)" in summary.index
    assert "plain BM25 + bi-encoder fusion (top-8 of iteration 0)" in summary.index
    for system in ("BM25 (full corpus)", "bi-encoder (full corpus)", "fusion teacher (full corpus)"):
        assert system in summary.index, summary.index
    acc = summary["PairAcc"].dropna()
    assert set(acc.index) == {"iteration 0", "pointwise teacher (top-8 of iteration 0)",
                              "pairwise teacher (top-3 of the pointwise teacher)"}
    pairs = pd.read_parquet(run["workdir"] / "results/teachers/pair_accuracy/pairs.parquet")
    assert len(pairs) > 0 and ((pairs["rank_rel"] - pairs["rank_non"]).abs() < 4).all()
    assert acc["pointwise teacher (top-8 of iteration 0)"] == pytest.approx(pairs["pointwise_right"].mean())
    assert acc["iteration 0"] == pytest.approx(pairs["student_right"].mean())


def test_a_finished_run_has_nothing_to_do(run):
    """The pairwise teacher links the pointwise teacher's files; Snakemake's timestamp of that
    directory must not be among them, or finishing the pairwise fit makes the pointwise teacher
    (and every round after it) look updated to the next invocation."""
    assert dry_run(run["workdir"], configfiles=(run["config"],)) == []
    point = run["workdir"] / "results/teachers/pointwise/model"
    pair = run["workdir"] / "results/teachers/pairwise/model"
    assert not any(p.name.startswith(".") for p in pair.iterdir() if p.name != ".snakemake_timestamp")
    if (pair / ".snakemake_timestamp").exists() and (point / ".snakemake_timestamp").exists():
        assert not (pair / ".snakemake_timestamp").samefile(point / ".snakemake_timestamp")


def test_a_fusion_setting_refits_the_teachers_but_not_the_student(run):
    changed = write_config(run["root"] / "heldout.yaml", {"teachers": {"pointwise": {"fit": {"heldout": 0.5}}}})
    rules = {rule for rule, _ in dry_run(run["workdir"], configfiles=(run["config"], changed))}
    assert {"fit_fusion_pointwise", "fit_fusion_pairwise", "pointwise", "pairwise", "train"} <= rules
    assert not rules & {"prepare", "init_checkpoint", "retrieve"}
    assert "index" in rules  # iteration 1's index follows its retrained checkpoint ...


REPORT_SECTIONS = ("1. Teachers", "2. Training", "3. Evaluation", "4. Time and memory", "summary.tsv",
                   "metrics.png", "loss.png", "teacher_scores.png", "disagreement.png", "teacher_cache.png",
                   "benchmarks.png")


def test_report_has_every_section(run):
    w = run["workdir"]
    # the run drew the figures (part of `all`); the report needs no other target
    for name in ("metrics", "loss", "teacher_scores", "disagreement", "teacher_cache", "benchmarks"):
        assert (w / f"results/figures/{name}.png").read_bytes().startswith(b"\x89PNG"), name
    snakemake(w, "--report", str(w / "results/report.html"), configfiles=(run["config"],))
    html = (w / "results/report.html").read_text()
    missing = [s for s in REPORT_SECTIONS if s not in html]
    assert not missing, missing
