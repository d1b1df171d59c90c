"""Seeds: the `seeds` check, the table over seeds (means and sds by hand), the ablation table's
seed-aware tests by hand, the figure, and the plans: more seeds after a finished one-seed run plan
only the new seeds' student side (no teacher refitted), and dropping a seed reruns no other."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from pairdistill import ablations, figures, io, seeds
from test_ablations import _materialise
from workflow import DATA_DIR, dry_run, planned_jobs, snakemake, write_config


@pytest.mark.parametrize("value, message", [
    ([], "seeds: the list is empty"),
    ([13, 14, 13], "seeds: 13 appears more than once"),
    ([13, 1.5], "seeds: 1.5 is not an integer"),
    ([13, True], "seeds: True is not an integer"),
    ([13, "x"], "seeds: 'x' is not an integer"),
    (14, "seeds: 14 is not a list of integers"),
    ([14, 15], "seeds: the first seed is the primary one"),
])
def test_bad_seeds_are_one_line_naming_seeds(value, message):
    with pytest.raises(ValueError) as exc:
        seeds.check({"seed": 13, "seeds": value})
    assert str(exc.value).startswith(message) and "\n" not in str(exc.value)


def test_seeds_default_to_seed_and_accept_written_integers():
    assert seeds.check({"seed": 13, "seeds": None}) == [13]
    assert seeds.check({"seed": 13}) == [13]
    assert seeds.check({"seed": 13, "seeds": ["13", "14", " 15"]}) == [13, 14, 15]  # --config seeds='[13,14, 15]'


def test_module_configs_share_the_primary_and_cache_its_scores():
    config = {"seed": 13, "seeds": [13, 14, 15], "ablations": {"variants": {"a": {}}, "run": None}}
    out = seeds.module_configs(config, [13, 14, 15], ["a"])
    assert sorted(out) == [14, 15]
    assert out[14]["seed"] == 14 and out[14]["seeds"] == [14]
    assert out[14]["seed_module"] == {"cache": ["results/"]}
    assert out[15]["seed_module"] == {"cache": ["results/"]}  # the primary's only: fixed whatever the list
    assert out[15]["ablations"]["run"] == ["a"]
    assert config["seeds"] == [13, 14, 15] and "seed_module" not in config  # not changed in place


def _metrics(system, iteration, value, measure="nDCG@10"):
    return pd.DataFrame({"system": [system], "iteration": pd.array([iteration], dtype="Int32"),
                         "eval_set": ["scifact/test"], "measure": [measure], "value": [value]})


def test_table_by_hand():
    by_seed = [(13, _metrics("PairDistill", 1, 0.60)), (14, _metrics("PairDistill", 1, 0.64)),
               (15, _metrics("PairDistill", 1, 0.65)), (13, _metrics("pointwise teacher", None, 0.70)),
               (14, _metrics("pointwise teacher", None, 0.70)), (15, _metrics("pointwise teacher", None, 0.72))]
    t = seeds.table(by_seed, [_metrics("BM25", None, 0.66)])
    assert list(t.columns) == io.SCHEMAS["seeds"].names
    row = t[t["system"] == "PairDistill"].iloc[0]
    assert row["mean"] == pytest.approx(0.63)
    assert row["sd"] == pytest.approx(math.sqrt(((0.03) ** 2 + 0.01 ** 2 + 0.02 ** 2) / 2))
    assert row["n_seeds"] == 3 and list(row["seeds"]) == [13, 14, 15]
    assert list(row["values"]) == pytest.approx([0.60, 0.64, 0.65]) and row["depends_on_seed"]
    bm25 = t[t["system"] == "BM25"].iloc[0]
    assert bm25["sd"] == 0.0 and not bm25["depends_on_seed"] and bm25["n_seeds"] == 3
    assert pd.isna(bm25["iteration"])
    one = seeds.table([(13, _metrics("PairDistill", 1, 0.6))])
    assert one["n_seeds"].iloc[0] == 1 and np.isnan(one["sd"].iloc[0])
    with pytest.raises(ValueError, match="seed 13 has two values"):
        seeds.table([(13, _metrics("PairDistill", 1, 0.6)), (13, _metrics("PairDistill", 1, 0.7))])


def test_stage_writes_parquet_tsv_and_the_cache_of_every_seed(tmp_path, capsys):
    paths = []
    for s, v in [(13, 0.60), (14, 0.64)]:
        p = tmp_path / f"m{s}.parquet"
        io.write_table(_metrics("PairDistill", 1, v), "metrics", p)
        paths.append((str(s), str(p)))
        (tmp_path / f"c{s}.tsv").write_text("iteration\tteacher\trows\treused\thit_rate\n"
                                            f"1\tpointwise\t100\t{s - 13}0\t{(s - 13) / 10}\n")
    shared = tmp_path / "b.parquet"
    io.write_table(_metrics("BM25", None, 0.66), "metrics", shared)
    seeds.seed_table(paths, shared=[str(shared)], out=str(tmp_path / "s.parquet"), out_tsv=str(tmp_path / "s.tsv"),
                     cache=[(str(s), str(tmp_path / f"c{s}.tsv")) for s in (13, 14)],
                     cache_out=str(tmp_path / "cache.tsv"))
    tsv = pd.read_csv(tmp_path / "s.tsv", sep="\t", keep_default_na=False)
    assert tsv.loc[tsv["system"] == "BM25", "note"].iloc[0] == "shared by every seed: sd 0"
    assert tsv.loc[tsv["system"] == "PairDistill", "values"].iloc[0] == "0.6000,0.6400"
    assert "0.6200 ± 0.0283" in capsys.readouterr().out  # the printed summary: mean ± sd
    cache = pd.read_csv(tmp_path / "cache.tsv", sep="\t")
    assert cache["seed"].tolist() == [13, 14] and cache["reused"].tolist() == [0, 10]


def _run(scores: dict[str, list[float]]) -> pd.DataFrame:
    """A run in which query q's passage d<q>-rel (relevant) is at the rank given by the score."""
    rows = []
    for q, (rel, other) in scores.items():
        rows += [(q, f"{q}-rel", 0, rel), (q, f"{q}-x", 0, other)]
    run = pd.DataFrame(rows, columns=["query_id", "doc_id", "rank", "score"])
    run["rank"] = run.groupby("query_id")["score"].rank(ascending=False, method="first").astype("int32")
    return run


def test_ablation_table_over_seeds_by_hand():
    qrels = pd.DataFrame({"split": "test", "query_id": ["a", "b", "c"], "doc_id": ["a-rel", "b-rel", "c-rel"],
                          "relevance": 1})
    top, second = [1.0, 0.0], [0.0, 1.0]  # the relevant passage first (RR 1) or second (RR 0.5)
    full = {13: {"a": top, "b": top, "c": second}, 14: {"a": top, "b": second, "c": second},
            15: {"a": top, "b": top, "c": top}}
    variant = {13: {"a": second, "b": top, "c": second}, 14: {"a": second, "b": second, "c": second},
               15: {"a": second, "b": second, "c": top}}
    runs = [(s, "full", 1, "test", _run(full[s])) for s in full] + \
           [(s, "v", 1, "test", _run(variant[s])) for s in variant]
    t = ablations.table(runs, qrels, {"test": ["RR@10"]}, {"test": "x/test"})
    rr = {k: {s: np.array([1.0 if d[q] == top else 0.5 for q in "abc"]) for s, d in runs_.items()}
          for k, runs_ in (("full", full), ("v", variant))}
    diffs = np.array([rr["v"][s].mean() - rr["full"][s].mean() for s in (13, 14, 15)])
    assert np.ptp(diffs) > 0.1  # the seeds disagree: a spread to estimate
    row = t[t["variant"] == "v"].iloc[0]
    assert row["n_seeds"] == 3 and row["spread"] == ""
    assert row["delta"] == pytest.approx(diffs.mean())
    assert row["delta_sd"] == pytest.approx(np.std(diffs, ddof=1))
    assert row["p_seeds"] == pytest.approx(stats.ttest_1samp(diffs, 0).pvalue)
    mine = np.mean([rr["v"][s] for s in (13, 14, 15)], axis=0)
    theirs = np.mean([rr["full"][s] for s in (13, 14, 15)], axis=0)
    assert row["p_value"] == pytest.approx(stats.ttest_rel(mine, theirs).pvalue)
    assert row["value"] == pytest.approx(mine.mean())
    # two seeds: the spread is not estimated, and the table says so
    two = ablations.table([r for r in runs if r[0] != 15], qrels, {"test": ["RR@10"]}, {"test": "x/test"})
    row = two[two["variant"] == "v"].iloc[0]
    assert row["n_seeds"] == 2 and row["spread"] == "not estimated (2 seeds < 3)"
    assert np.isnan(row["delta_sd"]) and np.isnan(row["p_seeds"])
    # a seed of the variant without the full method's run under it
    with pytest.raises(ValueError, match="under seed 16"):
        ablations.table([*runs, (16, "v", 1, "test", _run(variant[13]))], qrels, {"test": ["RR@10"]},
                        {"test": "x/test"})


def test_figure_draws_each_measure_over_seeds(tmp_path):
    by_seed = [(s, pd.concat([_metrics("PairDistill", n, 0.6 + 0.01 * n + 0.002 * (s - 13), m)
                              for n in (0, 1, 2) for m in ("nDCG@10", "R@100")]))
               for s in (13, 14, 15)]
    t = seeds.table(by_seed, [_metrics("BM25", None, 0.66)])
    io.write_table(t, "seeds", tmp_path / "seeds.parquet")
    figures.seeds(str(tmp_path / "seeds.parquet"), str(tmp_path / "seeds.png"))
    assert (tmp_path / "seeds.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------------------
# the workflow

def test_bad_seeds_stop_the_workflow_at_start_up(tmp_path):
    cfg = write_config(tmp_path / "overlay.yaml", {"data_dir": str(DATA_DIR), "seeds": [13, 13]})
    proc = snakemake(tmp_path, "-n", configfiles=(cfg,), check=False)
    assert proc.returncode != 0
    assert [line for line in (proc.stdout + proc.stderr).splitlines()
            if line.startswith("seeds: 13 appears more than once")]


@pytest.fixture(scope="module")
def one_seed_done(tmp_path_factory):
    """A workdir where the embedded default's one-seed run looks complete (stand-in outputs, then
    `snakemake --touch --forceall` records them as a real run would)."""
    workdir = tmp_path_factory.mktemp("seeds")
    cfg = write_config(workdir / "overlay.yaml", {"data_dir": str(DATA_DIR)})
    _materialise(workdir, dry_run(workdir, configfiles=(cfg,)))
    snakemake(workdir, "--touch", "--forceall", configfiles=(cfg,))
    return workdir, cfg


@pytest.mark.slow  # five Snakemake runs over three seeds' DAG, two of them touching every output
def test_more_seeds_plan_only_their_student_side_and_dropping_one_reruns_none(one_seed_done):
    workdir, cfg = one_seed_done
    three = "seeds=[13,14,15]"
    plan = snakemake(workdir, "-n", "--config", three, configfiles=(cfg,))
    jobs = planned_jobs(plan.stdout + plan.stderr)
    rules = Counter(rule for rule, _ in jobs)
    # no teacher fitted, no data prepared again: the seeds link the primary's (seed_shared_<rule>_<i>)
    assert not [r for r in rules if not r.startswith("seed_shared_") and ("fit" in r or "mine" in r or "prepare" in r)]
    assert {r.rsplit("_", 1)[0] for r in rules if r.startswith("seed_shared_")} == {
        "seed_shared_prepare", "seed_shared_fit_fusion_pointwise", "seed_shared_fit_fusion_pairwise",
        "seed_shared_corpus_baselines"}
    own = {r for r in rules if not r.startswith(("seed_14_", "seed_15_", "seed_shared_"))}
    assert own == {"seed_table", "seed_figure"}, rules  # nothing of the finished seed 13 reruns
    outputs = {o for _, outs in jobs for o in outs}
    for s in (14, 15):
        for n in (1, 2):
            assert f"results/seeds/{s}/iter-{n}/checkpoint" in outputs
        assert f"results/seeds/{s}/iter-0/index" in outputs
        assert f"results/seeds/{s}/teachers/pointwise/model" in outputs  # linked, not fitted
        assert f"results/seeds/{s}/data/corpus.parquet" in outputs
    assert {"results/seeds.parquet", "results/seeds.tsv", "results/figures/seeds.png"} <= outputs
    # a seed's teacher scoring reads the primary's scores of the same shard, up to its own round
    for block in plan.stdout.split("rule seed_15_pointwise:")[1:]:
        inputs, it = block.split("output:")[0], int(block.split("output: results/seeds/15/iter-")[1].split("/")[0])
        for n in range(1, it + 1):
            assert f"results/iter-{n}/pointwise/shard-000-of-001.parquet" in inputs
        assert "results/seeds/14/" not in inputs
    # every seed done; then seed 14 dropped: only the table over seeds and its figure rerun
    _materialise(workdir, jobs)
    snakemake(workdir, "--touch", "--forceall", "--config", three, configfiles=(cfg,))
    assert dry_run(workdir, "--config", three, configfiles=(cfg,)) == []
    assert Counter(r for r, _ in dry_run(workdir, "--config", "seeds=[13,15]", configfiles=(cfg,))) == \
        {"seed_table": 1, "seed_figure": 1}
