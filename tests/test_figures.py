"""The report's figures from hand-made artifacts: every PNG is written, by the command line as the
rule calls it, with and without the optional inputs (ablation table, benchmark files)."""

from __future__ import annotations

import pandas as pd
import pytest

from pairdistill import cli
from pairdistill.figures import FIGURES
from pairdistill.io import write_table

from test_inspect import results  # noqa: F401  (the fixture: a round of hand-made artifacts)

pytest.importorskip("matplotlib")


@pytest.fixture
def run_dir(results):  # noqa: F811
    r = results
    pd.DataFrame({"system": ["iteration 0", "iteration 1", "BM25"], "iteration": pd.array([0, 1, None], "Int32"),
                  "eval_set": "toy/test", "nDCG@10": [0.5, 0.6, 0.55], "PairAcc": [0.7, None, None]}
                 ).to_parquet(r / "summary.parquet")
    (r / "teacher_cache.tsv").write_text("iteration\tteacher\trows\treused\thit_rate\n"
                                         "1\tpointwise\t4\t0\t0.0\n1\tpairwise\t3\t0\t0.0\n")
    write_table(pd.DataFrame({"step": [0, 1, 2], "loss": [3.0, 2.0, 1.5], "loss_cl": [1.0, 0.8, 0.7],
                              "loss_kd": [1.0, 0.7, 0.5], "loss_pair": [1.0, 0.5, 0.3], "lr": 1e-5,
                              "elapsed_s": [1.0, 2.0, 3.0]}), "loss", r / "iter-1/train_loss.parquet")
    return r


def _args(r, out):
    return ["figures", "--summary", str(r / "summary.parquet"), "--cache", str(r / "teacher_cache.tsv"),
            "--losses", str(r / "iter-1/train_loss.parquet"), "--pointwise", str(r / "iter-1/pointwise.parquet"),
            "--pairwise", str(r / "iter-1/pairwise.parquet"), "--out-dir", str(out)]


def _pngs(out):
    for name in FIGURES:
        data = (out / f"{name}.png").read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 1000, name


def test_every_figure_is_drawn_without_optional_inputs(run_dir, tmp_path):
    out = tmp_path / "figures"
    assert cli.main(_args(run_dir, out) + ["--benchmarks", str(tmp_path / "none")]) == 0
    _pngs(out)


def test_ablations_and_benchmarks_are_drawn_when_present(run_dir, tmp_path):
    (run_dir / "ablations" / "no-pair").mkdir(parents=True)
    write_table(pd.DataFrame({"variant": ["full", "no-pair", "BM25"], "iteration": [1, 1, 1],
                              "eval_set": "toy/test", "measure": "nDCG@10", "value": [0.6, 0.58, 0.55],
                              "delta": [0.0, -0.02, -0.05], "p_value": [None, 0.3, 0.1], "n_queries": 2,
                              "n_seeds": 1, "delta_sd": None, "p_seeds": None, "spread": "not estimated (1 seed < 3)"})
                .astype({"iteration": "int32", "n_queries": "int32", "n_seeds": "int32", "delta_sd": "float64",
                         "p_seeds": "float64"}), "ablations", run_dir / "ablations.parquet")
    bench = tmp_path / "benchmarks" / "train"
    bench.mkdir(parents=True)
    (bench / "iter-1.tsv").write_text("s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
                                      "12.5\t0:00:12\t900.0\t1\t1\t1\t0\t0\t100\t12\n")
    out = tmp_path / "figures"
    assert cli.main(_args(run_dir, out) + ["--ablations", str(run_dir / "ablations.parquet"),
                                           "--benchmarks", str(tmp_path / "benchmarks")]) == 0
    _pngs(out)


def test_a_job_without_a_memory_sample_is_said_so_not_drawn_blank(tmp_path, monkeypatch):
    """Snakemake writes ``-`` as the peak RSS of a job that ended before its first sample (a tiny
    prepare): the bar is labelled as not measured instead of being left out silently."""
    from pairdistill import figures

    for rule, rss in (("prepare", "-"), ("train", "900.0")):
        (tmp_path / "benchmarks" / rule).mkdir(parents=True)
        (tmp_path / "benchmarks" / rule / "job.tsv").write_text(
            "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
            f"0.4\t0:00:00\t{rss}\t1\t1\t1\t0\t0\t100\t0\n")
    drawn = []
    monkeypatch.setattr(figures, "_save", lambda fig, out: drawn.append(fig))
    figures.benchmark_times(tmp_path / "benchmarks", tmp_path / "benchmarks.png")
    _, memory = drawn[0].axes
    notes = [t.get_text() for t in memory.texts]
    assert notes == ["not measured (the job ended before its first sample)"]
    assert [b.get_width() for b in memory.patches] == [0.0, 900.0]  # sorted by time: prepare first


def test_a_reranker_has_no_reference_line_where_its_top_n_decides_recall():
    from pairdistill.figures import repeats_first_stage

    point, pair = "pointwise teacher (top-100 of iteration 0)", "pairwise teacher (top-10 of the pointwise teacher)"
    assert repeats_first_stage(point, "R@100") and repeats_first_stage(point, "R@1000")
    assert repeats_first_stage(pair, "R@100") and repeats_first_stage(pair, "Success@10")
    assert not repeats_first_stage(point, "R@10") and not repeats_first_stage(point, "nDCG@10")
    assert not repeats_first_stage(pair, "PairAcc") and not repeats_first_stage("BM25 (full corpus)", "R@1000")
