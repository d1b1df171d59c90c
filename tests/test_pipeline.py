"""The whole DAG, 2 iterations in 2 query shards, on a slice of SciFact with a tiny random BERT.

One module-scoped run serves every test here. It is killed (SIGKILL to Snakemake and its jobs) at
several points: in the middle of a pointwise scoring shard, of a pairwise scoring shard and of
round 2's training, and after each kill rerun with --rerun-incomplete, as after a preemption. The
job itself kills the run right after a given part or training state (PAIRDISTILL_KILL_AFTER, see
pairdistill.preemption), so where it dies does not hang on timing. A second, uninterrupted run of
the same config is the reference its results must equal; what comes before round 1 is run once,
in the reference, and copied to start the killed run.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from pairdistill import io, preemption

from workflow import (DATA_DIR, REPO, dry_run, make_slice, snakemake, snakemake_cmd, tiny_overlay,
                      write_config)

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (DATA_DIR / "scifact").is_dir(), reason="SciFact not found")]

SHARDS = ("000-of-002", "001-of-002")
PART_ROWS = 16
# what comes before round 1 (data, iteration 0, the teachers fitted and evaluated): run once, in the
# reference; the killed run starts from a copy of it (Snakemake's records too), and runs the rest
UPSTREAM = ["results/iter-0/eval/test/metrics.parquet", "results/teachers/pointwise/rerank/metrics.parquet",
            "results/teachers/pairwise/rerank/metrics.parquet", "results/teachers/pair_accuracy/metrics.parquet"]
ARTIFACTS = {
    "results/data/corpus.parquet": "corpus",
    "results/data/queries.parquet": "queries",
    "results/data/qrels.parquet": "qrels",
    "results/teachers/negatives.parquet": "run",
    "results/teachers/pointwise/fit_loss.parquet": "teacher_loss",
    "results/teachers/pairwise/fit_loss.parquet": "teacher_loss",
    "results/teachers/pointwise/rerank/run.parquet": "run",
    "results/teachers/pointwise/rerank/metrics.parquet": "metrics",
    "results/teachers/pairwise/rerank/metrics.parquet": "metrics",
}
for n in (0, 1, 2):
    ARTIFACTS[f"results/iter-{n}/eval/test/run.parquet"] = "run"
    ARTIFACTS[f"results/iter-{n}/eval/test/metrics.parquet"] = "metrics"
for n in (1, 2):
    ARTIFACTS[f"results/iter-{n}/train_loss.parquet"] = "loss"
    for stage, schema in (("train_topk", "run"), ("pointwise", "pointwise"), ("pairs", "pairs"),
                          ("pairwise", "pairwise")):
        ARTIFACTS[f"results/iter-{n}/{stage}.parquet"] = schema
        for shard in SHARDS:
            ARTIFACTS[f"results/iter-{n}/{stage}/shard-{shard}.parquet"] = schema

# (PAIRDISTILL_KILL_AFTER, job log, outputs of that job, state it leaves for the rerun, what is built
# before: the other jobs of its stage the kill's run needs, which the variable would kill instead;
# the rerun's log line, of the point the kill left and the total, which must be beyond it)
KILLS = [
    ("pointwise:2", "logs/pointwise/iter-1/shard-000-of-002.log", ["results/iter-1/pointwise/shard-000-of-002.parquet"],
     "results/iter-1/pointwise/.shard-000-of-002.parquet.parts", [], r"resuming: (2) of (\d+) parts"),
    ("pairwise:1", "logs/pairwise/iter-1/shard-001-of-002.log", ["results/iter-1/pairwise/shard-001-of-002.parquet"],
     "results/iter-1/pairwise/.shard-001-of-002.parquet.parts", [], r"resuming: (1) of (\d+) parts"),
    ("train:1", "logs/train/iter-2.log", ["results/iter-2/checkpoint", "results/iter-2/train_loss.parquet"],
     "results/iter-2/train_state", ["results/iter-1/checkpoint"], r"resuming from step (2) of (\d+)"),
]


def _killed_after(workdir: Path, configfile: Path, kill_after: str, outputs: list[str], timeout: float = 900) -> None:
    """Run the workflow towards ``outputs`` in a session of its own, with PAIRDISTILL_KILL_AFTER set:
    the job named SIGKILLs the session (Snakemake and every job) right after its N-th part or state."""
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(REPO / ".cache" / "torch_extensions"),
           preemption.ENV: kill_after}
    proc = subprocess.run(snakemake_cmd(workdir, "--rerun-incomplete", *outputs, configfiles=(configfile,)),
                          capture_output=True, text=True, env=env, start_new_session=True, timeout=timeout)
    if proc.returncode != -signal.SIGKILL:
        raise AssertionError(f"{kill_after}: the workflow ended ({proc.returncode}) without being killed:\n"
                             f"{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_bert_dir):
    root = tmp_path_factory.mktemp("e2e")
    make_slice(root / "data")
    # one thread per job: bit-equal results between the two runs do not hang on thread scheduling;
    # parts of PART_ROWS rows: a few parts a scoring shard, so a kill after part 2 leaves some to resume
    overlay = tiny_overlay(root / "data", tiny_bert_dir, **{"shards": 2, "scoring.part_rows": PART_ROWS,
                                                             "train.save_every": 2, "threads": 1})
    configfile = write_config(root / "tiny.yaml", overlay)
    reference = root / "reference"
    reference.mkdir()
    snakemake(reference, "-p", *UPSTREAM, configfiles=(configfile,))  # -p ends --configfile's list
    workdir = root / "work"
    shutil.copytree(reference, workdir, symlinks=True)  # modification times kept: nothing upstream is stale
    snakemake(reference, configfiles=(configfile,))

    killed = []
    for kill_after, log, outputs, state, before, _ in KILLS:
        if before:
            snakemake(workdir, "-p", *before, configfiles=(configfile,))  # -p ends --configfile's list
        _killed_after(workdir, configfile, kill_after, outputs)
        killed.append({"log": log, "outputs_left": [o for o in outputs if (workdir / o).exists()],
                       "state_kept": (workdir / state).exists(), "kill_log": (workdir / log).read_text()})
        # what a user does after preemption: release the dead run's lock, rerun what was incomplete.
        # The killed job's outputs first, so its log shows this rerun.
        snakemake(workdir, "--unlock", configfiles=(configfile,))
        snakemake(workdir, "-p", "--rerun-incomplete", *outputs, configfiles=(configfile,))  # -p ends the list
        killed[-1]["rerun_log"] = (workdir / log).read_text()
    resumed = snakemake(workdir, "--rerun-incomplete", configfiles=(configfile,))
    return {"workdir": workdir, "reference": reference, "config": configfile, "root": root, "killed": killed,
            "resumed": resumed}


def test_the_killed_run_reran_nothing_it_copied(run):
    w, ref = run["workdir"], run["reference"]
    for rel in [*UPSTREAM, "results/teachers/pointwise/model/pairdistill_teacher.json", "logs/fit_teacher/pairwise.log"]:
        assert (w / rel).stat().st_mtime_ns == (ref / rel).stat().st_mtime_ns, rel


def test_each_kill_left_no_output_and_kept_its_resume_state(run):
    for k, (*_, resumed) in zip(run["killed"], KILLS):
        assert f"{preemption.ENV}: killing process group" in k["kill_log"], k["log"]
        assert k["outputs_left"] == [], k
        assert k["state_kept"], k
        # the rerun of the killed job continued from its state, with work left to do
        m = re.search(resumed, k["rerun_log"])
        assert m and int(m.group(2)) > int(m.group(1)), (k["log"], k["rerun_log"])
    w = run["workdir"]
    for _, _, _, state, _, _ in KILLS:
        assert not (w / state).exists(), state  # and removed it once its outputs were written


def test_killed_and_resumed_run_equals_an_uninterrupted_one(run):
    w, ref = run["workdir"], run["reference"]
    pd.testing.assert_frame_equal(pd.read_parquet(w / "results/summary.parquet"),
                                  pd.read_parquet(ref / "results/summary.parquet"))
    for n in (1, 2):
        for stage in ("train_topk", "pointwise", "pairs", "pairwise"):
            rel = f"results/iter-{n}/{stage}.parquet"
            pd.testing.assert_frame_equal(io.read_table(w / rel), io.read_table(ref / rel), obj=rel)
        rel = f"results/iter-{n}/train_loss.parquet"
        a, b = (io.read_table(d / rel).drop(columns="elapsed_s") for d in (w, ref))
        pd.testing.assert_frame_equal(a, b, obj=rel)
        got = load_file(w / f"results/iter-{n}/checkpoint/model.safetensors")
        want = load_file(ref / f"results/iter-{n}/checkpoint/model.safetensors")
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)


def test_no_temporary_is_left(run):
    assert not list((run["workdir"] / "results").rglob("*.tmp"))
    assert not list((run["workdir"] / "results").rglob(".*.parts"))


def test_every_artifact_has_its_schema(run):
    w = run["workdir"]
    for rel, name in ARTIFACTS.items():
        df = io.read_table(w / rel, name)
        assert len(df) > 0, rel
    for n in (0, 1, 2):
        assert (w / f"results/iter-{n}/eval/test/run.trec").stat().st_size > 0
        assert (w / f"results/iter-{n}/index/metadata.json").exists()
    assert (w / "results/teachers/pointwise/model/pairdistill_teacher.json").exists()


def test_stage_contents_are_consistent(run):
    w = run["workdir"]
    topk = io.read_table(w / "results/iter-1/train_topk.parquet", "run")
    assert topk.groupby("query_id")["rank"].max().max() <= 8
    pointwise = io.read_table(w / "results/iter-1/pointwise.parquet", "pointwise")
    # every retrieved pair was scored, and every query's teacher ranks are 1..n
    assert len(pointwise.merge(topk, on=["query_id", "doc_id"])) == len(topk)
    for _, g in pointwise.groupby("query_id"):
        assert sorted(g["teacher_rank"]) == list(range(1, len(g) + 1))
    pairs = io.read_table(w / "results/iter-1/pairs.parquet", "pairs")
    gap = pairs["rank_b"] - pairs["rank_a"]
    assert ((gap > 0) & (gap < 4)).all()
    assert (pairs.groupby("query_id").size() <= 3).all()
    pairwise = io.read_table(w / "results/iter-1/pairwise.parquet", "pairwise")
    assert len(pairwise) == len(pairs)
    assert pairwise["p_ba"].notna().all()  # both orders by default
    expected = (pairwise["p_ab"] + 1 - pairwise["p_ba"]) / 2
    np.testing.assert_allclose(pairwise["prob"], expected, rtol=1e-5)
    loss = io.read_table(w / "results/iter-1/train_loss.parquet", "loss")
    assert np.isfinite(loss[["loss", "loss_cl", "loss_kd", "loss_pair"]].to_numpy()).all()
    np.testing.assert_allclose(loss["loss"], loss["loss_cl"] + loss["loss_kd"] + 3.0 * loss["loss_pair"],
                               rtol=1e-4)


def test_metrics_are_finite_and_summarized(run):
    w = run["workdir"]
    summary = pd.read_parquet(w / "results/summary.parquet")
    assert list(summary.columns) == ["system", "iteration", "eval_set", "nDCG@10", "RR@10", "R@100", "R@1000",
                                     "PairAcc"]
    # Table 5's pair accuracy: the student at iteration 0 and both teachers, on the same pairs
    acc = summary.set_index("system")["PairAcc"].dropna()
    assert len(acc) == 3 and acc.index[0] == "iteration 0" and ((acc >= 0) & (acc <= 1)).all()
    assert set(summary["eval_set"]) == {"scifact-slice/test"}
    assert summary["system"].tolist()[:3] == ["iteration 0", "iteration 1", "iteration 2"]
    assert len(summary) == 5
    values = summary[["nDCG@10", "RR@10", "R@100", "R@1000"]].to_numpy(dtype=float)
    assert np.isfinite(values).all() and (values >= 0).all() and (values <= 1).all()
    assert "PairDistill summary" in run["resumed"].stdout + run["resumed"].stderr
    cache = pd.read_csv(w / "results/teacher_cache.tsv", sep="\t")
    assert cache[["iteration", "teacher"]].values.tolist() == [[1, "pairwise"], [1, "pointwise"],
                                                              [2, "pairwise"], [2, "pointwise"]]
    assert (cache.loc[cache["iteration"] == 1, "reused"] == 0).all()
    # round 2 retrieves for the same queries: much of its top-k was scored in round 1
    reused = cache.set_index(["iteration", "teacher"])["reused"]
    assert cache.set_index(["iteration", "teacher"]).loc[(2, "pointwise"), "hit_rate"] > 0.2
    pointwise = [io.read_table(w / f"results/iter-{n}/pointwise.parquet") for n in (1, 2)]
    again = pointwise[1].merge(pointwise[0][["query_id", "doc_id"]])
    assert reused[(2, "pointwise")] == len(again)
    # a pair is reused when round 1 scored it in either order (both orders are scored here)
    pairs = [io.read_table(w / f"results/iter-{n}/pairs.parquet") for n in (1, 2)]
    unordered = [set(zip(p["query_id"], p[["doc_a", "doc_b"]].min(axis=1), p[["doc_a", "doc_b"]].max(axis=1)))
                 for p in pairs]
    assert reused[(2, "pairwise")] == len(unordered[1] & unordered[0])


def test_checkpoints_differ_between_iterations(run):
    w = run["workdir"]
    weights = [load_file(w / f"results/iter-{n}/checkpoint/model.safetensors") for n in (0, 1, 2)]
    for a, b in ((0, 1), (1, 2)):
        assert weights[a].keys() == weights[b].keys()
        assert any(not torch.equal(weights[a][k], weights[b][k]) for k in weights[a]), (a, b)


def test_checkpoint_loads_in_stock_colbert_searcher(run):
    from pairdistill.students import colbert

    w = run["workdir"]
    colbert.setup_colbert()
    from colbert import Searcher

    index = (w / "results/iter-2/index").resolve()
    with colbert.colbert_run(run["root"] / "colbert"):
        searcher = Searcher(index=str(index), checkpoint=str((w / "results/iter-2/checkpoint").resolve()),
                            collection=str(index / "collection.tsv"), verbose=0)
        pids, ranks, scores = searcher.search("vitamin D deficiency and bone density", k=5)
    assert len(pids) == 5 and ranks == [1, 2, 3, 4, 5]
    assert all(math.isfinite(s) for s in scores)


def test_second_run_has_nothing_to_do(run):
    assert dry_run(run["workdir"], configfiles=(run["config"],)) == []


def test_next_iteration_plans_only_its_own_jobs(run):
    jobs = dry_run(run["workdir"], "--config", "iteration=3", configfiles=(run["config"],))
    rules = sorted(rule for rule, _ in jobs)
    assert rules == sorted(["retrieve", "pointwise", "sample_pairs", "pairwise"] * 2 + ["gather"] * 4
                           + ["train", "index", "evaluate", "summary", "figures"])
    for rule, outputs in jobs:
        if rule not in ("summary", "figures"):
            assert all("results/iter-3/" in o for o in outputs), (rule, outputs)


def test_teacher_setting_reruns_scoring_and_downstream_only(run):
    changed = write_config(run["root"] / "teacher.yaml", {"teachers": {"pointwise": {"max_length": 56}}})
    jobs = dry_run(run["workdir"], configfiles=(run["config"], changed))
    planned = {(rule, o) for rule, outputs in jobs for o in outputs}
    rules = {rule for rule, _ in jobs}
    assert {"pointwise", "sample_pairs", "pairwise", "gather", "train"} <= rules
    assert ("pointwise", "results/iter-1/pointwise/shard-000-of-002.parquet") in planned
    assert not rules & {"prepare", "init_checkpoint", "mine_negatives", "fit_teacher"}
    untouched = {"results/iter-0/index", "results/iter-0/eval/test/metrics.parquet",
                 "results/iter-1/train_topk.parquet", "results/iter-1/train_topk/shard-000-of-002.parquet"}
    assert not untouched & {o for _, o in planned}


def test_shard_count_change_reruns_the_sharded_stages(run):
    changed = write_config(run["root"] / "shards.yaml", {"shards": 3})
    jobs = dry_run(run["workdir"], configfiles=(run["config"], changed))
    counts = {}
    for rule, _ in jobs:
        counts[rule] = counts.get(rule, 0) + 1
    assert counts["retrieve"] == counts["pointwise"] == counts["pairwise"] == 6
    assert not set(counts) & {"prepare", "init_checkpoint", "mine_negatives", "fit_teacher"}


def test_upstream_ablation_variant_runs_the_method_again_in_its_own_directory(run):
    """An ablation variant that changes pair sampling (upstream of training) runs every stage its
    setting feeds, for real, under results/ablations/<variant>/; the full run is left as it was.
    Runs last in this module, in the reference run's directory (its comparisons are done)."""
    workdir, config = run["reference"], run["config"]
    before = {p: (workdir / p).stat().st_mtime_ns for p in ("results/iter-2/checkpoint", "results/summary.parquet")}
    variant = "ablations={run: [delta-3], variants: {delta-3: {pairs: {delta: 3}}}}"
    snakemake(workdir, "-p", "ablations", "--config", variant, configfiles=(config,))  # -p ends --configfile's list
    root = workdir / "results/ablations/delta-3"
    # what the setting reaches: its own pairs (within 3 ranks), pairwise scores, checkpoints, runs
    for shard in SHARDS:
        pairs = io.read_table(root / f"iter-1/pairs/shard-{shard}.parquet", "pairs")
        assert len(pairs) and ((pairs["rank_a"] - pairs["rank_b"]).abs() < 3).all()
    for n in (1, 2):
        assert (root / f"iter-{n}/checkpoint").is_dir() and (workdir / f"logs/ablations/delta-3/train/iter-{n}.log").exists()
    # what it does not reach comes out as the full method's: round 1's top-k and pointwise scores
    for stage in ("train_topk", "pointwise"):
        for shard in SHARDS:
            mine = pd.read_parquet(root / f"iter-1/{stage}/shard-{shard}.parquet")
            full = pd.read_parquet(workdir / f"results/iter-1/{stage}/shard-{shard}.parquet")
            pd.testing.assert_frame_equal(mine, full)
    table = io.read_table(workdir / "results/ablations.parquet", "ablations")
    rows = table[table["variant"] == "delta-3"]
    assert sorted(rows["iteration"].unique()) == [1, 2] and np.isfinite(rows["value"]).all()
    # the full run: untouched, nothing to do
    assert {p: (workdir / p).stat().st_mtime_ns for p in before} == before
    assert dry_run(workdir, configfiles=(config,)) == []
    assert dry_run(workdir, "ablations", "--config", variant, configfiles=(config,)) == []


def test_a_second_seed_reruns_the_student_side_on_the_shared_teachers(run):
    """seeds [13, 14] after the finished one-seed run, for real: seed 14 trains its own rounds under
    results/seeds/14/ on the primary's teachers (hard links: the same files, nothing refitted), its
    scoring reuses the primary's teacher scores, and results/seeds.parquet holds both seeds. The
    primary's run is left as it was. Runs last in this module, in the reference run's directory."""
    workdir, config = run["reference"], run["config"]
    before = {p: (workdir / p).stat().st_mtime_ns for p in ("results/iter-2/checkpoint", "results/summary.parquet",
                                                             "results/teachers/pointwise/model")}
    snakemake(workdir, "-p", "--config", "seeds=[13,14]", configfiles=(config,))  # -p ends --configfile's list
    seed = workdir / "results/seeds/14"
    for kind in ("pointwise", "pairwise"):
        mine, primary = seed / f"teachers/{kind}/model", workdir / f"results/teachers/{kind}/model"
        for f in primary.rglob("*"):
            if f.is_file() and not f.name.startswith(".snakemake"):  # Snakemake's own marker: each dir its own
                assert (mine / f.relative_to(primary)).stat().st_ino == f.stat().st_ino  # linked, not fitted
    assert not (workdir / "logs/seeds/14/fit_teacher").exists()
    # its own student side: other rounds (iteration 0 may equal the primary's here: the slice has
    # fewer passages than the PCA sample, so every seed's sample is the whole corpus)
    for n in (1, 2):
        a = load_file(seed / f"iter-{n}/checkpoint/model.safetensors")
        b = load_file(workdir / f"results/iter-{n}/checkpoint/model.safetensors")
        assert not all(torch.equal(a[k], b[k]) for k in a), n
    cache = pd.read_csv(seed / "teacher_cache.tsv", sep="\t")
    first = cache[cache["iteration"] == 1].set_index("teacher")
    assert sorted(first.index) == ["pairwise", "pointwise"]
    assert first.loc["pointwise", "reused"] > 0  # round 1 reuses the primary's scores (pairs are drawn anew)
    pointwise = io.read_table(seed / "iter-1/pointwise.parquet", "pointwise")
    primary = io.read_table(workdir / "results/iter-1/pointwise.parquet", "pointwise")
    both = pointwise[pointwise["cached"]].merge(primary, on=["query_id", "doc_id"], suffixes=("", "_13"))
    assert len(both) and (both["teacher_score"] == both["teacher_score_13"]).all()
    table = io.read_table(workdir / "results/seeds.parquet", "seeds")
    rounds = table[table["iteration"].notna()]
    assert (rounds["n_seeds"] == 2).all() and np.isfinite(rounds["sd"]).all()
    assert (workdir / "results/figures/seeds.png").stat().st_size > 0
    assert {p: (workdir / p).stat().st_mtime_ns for p in before} == before
    assert dry_run(workdir, "--config", "seeds=[13,14]", configfiles=(config,)) == []
