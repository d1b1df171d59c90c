"""Ablations: the table on hand-made runs (means, deltas and paired t-tests by hand), the variants'
start-up checks, and the plans of `snakemake ablations` (only training, indexing and evaluation
of each variant once the full run exists)."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from pairdistill import ablations, evaluate, io
from workflow import DATA_DIR, REPO, dry_run, snakemake, write_config

CONFIG = yaml.safe_load((REPO / "config.yaml").read_text())


def _run(rows):
    return pd.DataFrame(rows, columns=["query_id", "doc_id", "rank", "score"]).astype(
        {"rank": "int32", "score": "float32"})


# q3 is judged but missing from the full method's run: it counts as 0; q9 is another split's
QRELS = pd.DataFrame({"split": ["test"] * 3 + ["train"], "query_id": ["q1", "q2", "q3", "q9"],
                      "doc_id": ["a", "x", "m", "a"], "relevance": [1, 1, 1, 1]}).astype({"relevance": "int32"})
FULL_1 = _run([("q1", "a", 1, 3.0), ("q1", "b", 2, 2.0), ("q2", "y", 1, 2.0), ("q2", "x", 2, 1.0)])
FULL_2 = _run([("q1", "a", 1, 3.0), ("q2", "x", 1, 2.0), ("q3", "m", 1, 1.0)])
NO_PAIR_1 = _run([("q1", "b", 1, 3.0), ("q1", "a", 2, 2.0), ("q2", "x", 1, 2.0), ("q3", "z", 1, 3.0),
                  ("q3", "w", 2, 2.0), ("q3", "m", 3, 1.0)])
MEASURES = {"test": ["RR@10", "R@1"]}


def _table(runs):
    return ablations.table(runs, QRELS, MEASURES, {"test": "toy/test"})


def test_table_by_hand():
    runs = [("full", 1, "test", FULL_1), ("full", 2, "test", FULL_2),
            ("no-pair", 1, "test", NO_PAIR_1), ("no-pair", 2, "test", FULL_2)]
    t = _table(runs)
    assert list(t.columns) == ["variant", "iteration", "eval_set", "measure", "value", "delta", "p_value",
                               "n_queries", "n_seeds", "delta_sd", "p_seeds", "spread"]
    assert (t["n_seeds"] == 1).all() and (t["spread"] == "not estimated (1 seed < 3)").all()
    assert list(zip(t["variant"], t["iteration"], t["measure"])) == [
        ("full", 1, "RR@10"), ("full", 1, "R@1"), ("full", 2, "RR@10"), ("full", 2, "R@1"),
        ("no-pair", 1, "RR@10"), ("no-pair", 1, "R@1"), ("no-pair", 2, "RR@10"), ("no-pair", 2, "R@1")]
    assert (t["eval_set"] == "toy/test").all() and (t["n_queries"] == 3).all()
    row = t.set_index(["variant", "iteration", "measure"])
    # per query (q1, q2, q3): full at iteration 1 RR [1, 1/2, 0], R@1 [1, 0, 0]; no-pair RR [1/2, 1, 1/3], R@1 [0, 1, 0]
    full_rr, variant_rr = np.array([1, 0.5, 0]), np.array([0.5, 1, 1 / 3])
    assert row.loc[("full", 1, "RR@10"), "value"] == pytest.approx(0.5)
    assert row.loc[("no-pair", 1, "RR@10"), "value"] == pytest.approx((0.5 + 1 + 1 / 3) / 3)
    assert row.loc[("no-pair", 1, "RR@10"), "delta"] == pytest.approx((0.5 + 1 + 1 / 3) / 3 - 0.5)
    assert row.loc[("no-pair", 1, "RR@10"), "p_value"] == pytest.approx(stats.ttest_rel(variant_rr, full_rr).pvalue)
    # differences (-1, 1, 0): mean 0, so t = 0 and p = 1
    assert row.loc[("no-pair", 1, "R@1"), "delta"] == pytest.approx(0.0)
    assert row.loc[("no-pair", 1, "R@1"), "p_value"] == pytest.approx(1.0)
    # the full method itself, and a variant equal to it on every query: no difference, no test
    for key in [("full", 1, "RR@10"), ("full", 2, "R@1"), ("no-pair", 2, "RR@10"), ("no-pair", 2, "R@1")]:
        assert row.loc[key, "delta"] == 0.0 and math.isnan(row.loc[key, "p_value"]), key
    assert row.loc[("full", 2, "RR@10"), "value"] == pytest.approx(1.0)


def test_references_are_compared_with_the_last_iteration():
    runs = [("full", 1, "test", FULL_1), ("full", 2, "test", FULL_2)]
    t = ablations.table(runs, QRELS, MEASURES, {"test": "toy/test"}, references=[("BM25", "test", NO_PAIR_1)])
    row = t.set_index(["variant", "iteration", "measure"])
    assert list(t["variant"].unique()) == ["full", "BM25"]
    # full at iteration 2: RR (1, 1, 1); the reference: RR (1/2, 1, 1/3)
    ref = np.array([0.5, 1, 1 / 3])
    assert row.loc[("BM25", 2, "RR@10"), "value"] == pytest.approx(ref.mean())
    assert row.loc[("BM25", 2, "RR@10"), "delta"] == pytest.approx(ref.mean() - 1.0)
    assert row.loc[("BM25", 2, "RR@10"), "p_value"] == pytest.approx(stats.ttest_rel(ref, np.ones(3)).pvalue)


def test_table_full_rows_match_the_metrics():
    t = _table([("full", 1, "test", FULL_1)])
    metrics = evaluate.metrics(FULL_1, QRELS[QRELS["split"] == "test"], MEASURES["test"], system="s",
                               iteration=1, eval_set="toy/test")
    assert t["value"].tolist() == metrics["value"].tolist()


def test_paired_t_test_by_hand():
    values, full = np.array([0.5, 1.0, 1 / 3, 0.2]), np.array([1.0, 0.5, 0.0, 0.2])
    d = values - full
    t = d.mean() / (d.std(ddof=1) / math.sqrt(len(d)))
    assert ablations.paired_p_value(values, full) == pytest.approx(2 * stats.t.sf(abs(t), df=len(d) - 1))
    assert math.isnan(ablations.paired_p_value(full, full))


def test_table_needs_the_full_method_at_each_iteration():
    with pytest.raises(ValueError, match="full method at iteration 2"):
        _table([("full", 1, "test", FULL_1), ("no-pair", 2, "test", FULL_2)])


def test_stage_writes_parquet_and_tsv(tmp_path):
    from pairdistill.cli import main

    paths = {}
    for name, run in {"full": FULL_1, "no-kd": NO_PAIR_1}.items():
        paths[name] = tmp_path / name / "run.parquet"
        io.write_table(run, "run", paths[name])
    io.write_table(QRELS, "qrels", tmp_path / "qrels.parquet")
    out = tmp_path / "ablations.parquet"
    assert main(["ablation-table", "--run", "13", "full", "1", "test", str(paths["full"]),
                 "--run", "13", "no-kd", "1", "test", str(paths["no-kd"]), "--measures", "test", "RR@10", "R@1",
                 "--qrels", str(tmp_path / "qrels.parquet"), "--dataset", "toy", "--out", str(out),
                 "--out-tsv", str(tmp_path / "ablations.tsv")]) == 0
    table = io.read_table(out, "ablations")
    assert table["variant"].tolist() == ["full", "full", "no-kd", "no-kd"]
    assert (table["eval_set"] == "toy/test").all()
    tsv = pd.read_csv(tmp_path / "ablations.tsv", sep="\t")
    assert list(tsv.columns) == [*table.columns, "test"] and len(tsv) == 4
    assert tsv["test"].iloc[0] == ablations.TEST  # the tests named in the table
    assert tsv["p_value"].isna().sum() == 2  # the full method's rows: empty


# --------------------------------------------------------------------------------------------
# variants in config

def _config(variants, run=None):
    return {**CONFIG, "ablations": {"variants": variants, "run": run}}


def test_default_variants_are_the_papers():
    variants = ablations.variants(CONFIG)
    assert list(variants) == ["no-pair", "no-kd", "labels-only", "pair-0.5", "pair-1", "pair-5"]
    assert (variants["labels-only"]["lambda_kd"], variants["labels-only"]["lambda_pair"]) == (0, 0)
    assert variants["pair-0.5"]["lambda_pair"] == 0.5
    assert {k: v for k, v in variants["no-kd"].items() if k != "lambda_kd"} == {
        k: v for k, v in CONFIG["train"].items() if k != "lambda_kd"}
    assert CONFIG["train"]["lambda_pair"] == 3  # the paper's lambda_pair 3 is the full method
    assert ablations.requested(CONFIG, variants) == list(variants)


def test_dotted_and_nested_keys_are_one_setting():
    variants = ablations.variants(_config({"a": {"train.lambda_pair": 1, "train": {"lr": 1e-4}}}))
    assert (variants["a"]["lambda_pair"], variants["a"]["lr"]) == (1, 1e-4)
    with pytest.raises(ValueError, match=r"^ablations\.variants\.a\.train\.lambda_pair: set twice"):
        ablations.variants(_config({"a": {"train.lambda_pair": 1, "train": {"lambda_pair": 2}}}))


@pytest.mark.parametrize("variants, message", [
    ({"typo": {"train": {"lamda_pair": 0}}}, "ablations.variants.typo.train.lamda_pair: unknown key"),
    ({"flat": {"lambda_pair": 0}}, "ablations.variants.flat.lambda_pair: unknown key"),
    ({"k": {"evaluate": {"k": 8}}}, "ablations.variants.k.evaluate.k: cannot vary in an ablation"),
    ({"i": {"iteration": 3}}, "ablations.variants.i.iteration: cannot vary in an ablation"),
    ({"s": {"shards": 2}}, "ablations.variants.s.shards: cannot vary in an ablation"),
    ({"p": {"pairs": 5}}, "ablations.variants.p.pairs: is a section"),
    ({"d": {"pairs": {"delta": 1}}}, "ablations.variants.d.pairs.delta: 1 is less than the minimum of 2"),
    ({"t": {"teachers.pairwise.modl": "x"}}, "ablations.variants.t.teachers.pairwise.modl: unknown key"),
    ({"Full": {"train": {"lambda_pair": 0}}}, "ablations.variants.Full: name collides with 'full'"),
    ({"no-pair": {"train": {"lambda_pair": 0}}, "No_Pair": {"train": {"lambda_pair": 1}}},
     "ablations.variants.No_Pair: name collides with variant 'no-pair'"),
    ({"a/b": {"train": {"lambda_pair": 0}}}, "ablations.variants.a/b: a variant name is"),
    ({"neg": {"train": {"lambda_pair": -1}}}, "ablations.variants.neg.train.lambda_pair: -1 is less than the minimum"),
    ({"empty": {}}, "ablations.variants.empty: a variant sets at least one"),
])
def test_bad_variants_are_one_line_naming_the_key(variants, message):
    with pytest.raises(ValueError) as err:
        ablations.variants(_config(variants))
        ablations.upstream_configs(_config(variants))  # the values of upstream settings
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_upstream_variants_get_a_complete_config_of_their_own():
    config = _config({"a": {"train": {"lambda_pair": 0}},
                      "b": {"pairs.delta": "5", "train": {"lambda_kd": "0.5"}},  # as --config gives them
                      "c": {"teachers": {"pairwise": {"model": "castorini/duot5-base-msmarco"}}}})
    upstream = ablations.upstream_configs(config)
    assert list(upstream) == ["b", "c"]  # "a" changes training only: it reuses the teacher scores
    b = upstream["b"]
    assert b["pairs"] == {**config["pairs"], "delta": 5} and b["train"]["lambda_kd"] == 0.5
    assert b["ablations"]["variants"] == {} and b["ablations"]["run"] is None  # no ablations of its own
    assert b["seeds"] == [b["seed"]]  # one seed: a variant's module runs no seeds of its own
    assert {k: v for k, v in b.items() if k not in ("pairs", "train", "ablations", "seeds")} == {
        k: v for k, v in config.items() if k not in ("pairs", "train", "ablations", "seeds")}
    assert config["pairs"]["delta"] == CONFIG["pairs"]["delta"]  # the full method's config is untouched
    # a text setting stays text (not parsed as YAML); the variant's train settings include its changes
    assert upstream["c"]["teachers"]["pairwise"]["model"] == "castorini/duot5-base-msmarco"
    assert ablations.variants(config)["b"]["lambda_kd"] == 0.5


def test_seed_cannot_vary_when_it_cuts_the_evaluation_split():
    config = {**_config({"s": {"seed": 7}}),
              "query_splits": {"adapt": {"from": "test", "share": 0.5}, "heldout": {"from": "test", "rest_of": ["adapt"]}}}
    with pytest.raises(ValueError, match=r"^ablations\.variants\.s\.seed: cannot vary while query_splits is set"):
        ablations.variants(config)
    assert list(ablations.upstream_configs(_config({"s": {"seed": 7}}))) == ["s"]  # without derived splits it can


def test_run_picks_declared_variants():
    config = _config({"a": {"train": {"lambda_pair": 0}}, "b": {"train": {"lambda_kd": 0}}}, run=["b"])
    assert ablations.requested(config, ablations.variants(config)) == ["b"]
    config["ablations"]["run"] = ["c"]
    with pytest.raises(ValueError, match=r"^ablations\.run: 'c' is not a declared variant"):
        ablations.requested(config, ablations.variants(config))


def test_train_flags_are_the_train_stage_flags():
    from pairdistill.cli import build_parser

    settings = ablations.variants(CONFIG)["labels-only"]
    args = build_parser().parse_args(
        ["train", *"--checkpoint c --corpus c --queries q --qrels r --pointwise p --pairwise p --out o "
                   "--loss-out l --split s --query-maxlen 8 --doc-maxlen 8".split(),
         *ablations.train_flags(settings).split()])
    for key, value in settings.items():
        if key not in ablations.SPEED:
            assert getattr(args, key) == value, key


# --------------------------------------------------------------------------------------------
# the workflow: start-up errors and plans

@pytest.mark.parametrize("variants, message", [
    ({"typo": {"train": {"lamda_pair": 0}}}, "ablations.variants.typo.train.lamda_pair: unknown key"),
    ({"k": {"evaluate": {"k": 8}}}, "ablations.variants.k.evaluate.k: cannot vary in an ablation"),
    ({"d": {"retrieve": {"top_k": 1}}}, "ablations.variants.d.retrieve.top_k: 1 is less than the minimum"),
    ({"FULL": {"train": {"lambda_kd": 0}}}, "ablations.variants.FULL: name collides with 'full'"),
])
def test_workflow_stops_at_start_up(tmp_path, variants, message):
    cfg = write_config(tmp_path / "overlay.yaml", {"data_dir": str(DATA_DIR), "ablations": {"variants": variants}})
    proc = snakemake(tmp_path, "-n", configfiles=(cfg,), check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert [line for line in out.splitlines() if line.startswith(message)], out[-2000:]


def _materialise(workdir: Path, jobs) -> None:
    """Stand-ins for a job list's outputs (directories where the name has no suffix)."""
    for _, outputs in jobs:
        for out in outputs:
            path = workdir / out
            if path.suffix:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()
            else:
                path.mkdir(parents=True, exist_ok=True)


TWO = "ablations={run: [labels-only, no-pair]}"


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """A workdir where the full method's run (`all`) looks complete: stand-in outputs, then
    `snakemake --touch --forceall` records them (params, code, inputs) as a real run would."""
    workdir = tmp_path_factory.mktemp("ablations")
    cfg = write_config(workdir / "overlay.yaml", {"data_dir": str(DATA_DIR)})
    full = dry_run(workdir, configfiles=(cfg,))
    assert not [rule for rule, _ in full if rule.startswith("ablation")]  # not part of `all`
    _materialise(workdir, full)
    snakemake(workdir, "--touch", "--forceall", configfiles=(cfg,))
    return workdir, cfg, full


def test_ablations_plan_only_training_indexing_and_evaluation(done):
    workdir, cfg, _ = done
    jobs = dry_run(workdir, "ablations", "--config", TWO, configfiles=(cfg,))
    assert Counter(rule for rule, _ in jobs) == {"ablation_train": 4, "ablation_index": 4,
                                                 "ablation_evaluate": 4, "ablation_table": 1,
                                                 "ablation_figure": 1}
    outputs = {out for _, outs in jobs for out in outs}
    for variant in ("labels-only", "no-pair"):
        for n in (1, 2):
            assert f"results/ablations/{variant}/iter-{n}/checkpoint" in outputs
            assert f"results/ablations/{variant}/iter-{n}/index" in outputs
            assert f"results/ablations/{variant}/iter-{n}/eval/test/run.parquet" in outputs
    assert "results/ablations.parquet" in outputs and "results/ablations.tsv" in outputs


def test_variant_trains_on_the_full_methods_teacher_scores(done):
    workdir, cfg, _ = done
    proc = snakemake(workdir, "-n", "-p", "ablations", "--config", "ablations={run: [no-kd]}", configfiles=(cfg,))
    trains = sorted(line for line in proc.stdout.splitlines() if " train --checkpoint" in line)
    assert len(trains) == 2
    for cmd in trains:
        out = cmd.split("--out ")[1].split()[0]
        n = int(out.split("iter-")[1].split("/")[0])
        start = "results/iter-0/checkpoint" if n == 1 else f"results/ablations/no-kd/iter-{n - 1}/checkpoint"
        assert out == f"results/ablations/no-kd/iter-{n}/checkpoint"
        assert f"--checkpoint {start} " in cmd
        assert f"--pointwise results/iter-{n}/pointwise.parquet --pairwise results/iter-{n}/pairwise.parquet" in cmd
        assert "--lambda-kd 0 " in cmd and "--lambda-pair 3.0 " in cmd
        assert f'--state-dir "$(dirname results/ablations/no-kd/iter-{n}/checkpoint)/train_state" ' in cmd


@pytest.mark.slow  # six Snakemake runs over the variants' DAG, one touching every output
def test_rerun_plans(done):
    workdir, cfg, _ = done
    run = "ablations={run: [pair-1, pair-5]}"  # other variants than the tests above plan
    jobs = dry_run(workdir, "ablations", "--config", run, configfiles=(cfg,))
    _materialise(workdir, jobs)
    snakemake(workdir, "--touch", "--forceall", "ablations", "--config", run, configfiles=(cfg,))
    assert dry_run(workdir, "ablations", "--config", run, configfiles=(cfg,)) == []
    # one variant's setting changed: that variant's jobs and the table, nothing else
    changed = dry_run(workdir, "ablations", "--config",
                      "ablations={run: [pair-1, pair-5], variants: {pair-5: {train: {lr: 0.0002}}}}",
                      configfiles=(cfg,))
    assert Counter(rule for rule, _ in changed) == {"ablation_train": 2, "ablation_index": 2,
                                                    "ablation_evaluate": 2, "ablation_table": 1,
                                                    "ablation_figure": 1}
    assert all("/pair-5/" in outs[0] for rule, outs in changed if rule not in ("ablation_table", "ablation_figure"))
    # a setting upstream of training reruns what it feeds: the full method from pair sampling on,
    # and every variant's training after it
    pairs = write_config(workdir / "pairs.yaml", {"pairs": {"per_query": 5}})
    upstream = Counter(rule for rule, _ in dry_run(workdir, "ablations", "--config", run, configfiles=(cfg, pairs)))
    assert upstream["sample_pairs"] == 2 and upstream["train"] == 2 and upstream["ablation_train"] == 4
    assert upstream["ablation_index"] == 4 and upstream["ablation_evaluate"] == 4
    assert not {"prepare", "init_checkpoint", "fit_teacher", "mine_negatives"} & set(upstream)
    # with the ablation table built, the default target still plans no variant: `all`'s figures
    # do not read it (the `ablations` target draws the variants)
    assert (workdir / "results/ablations.parquet").exists()
    default = {rule for rule, _ in dry_run(workdir, configfiles=(cfg, pairs))}
    assert "train" in default and not {r for r in default if r.startswith("ablation")}


UPSTREAM = "ablations={run: [no-kd, delta-5], variants: {delta-5: {pairs: {delta: 5}}}}"


def test_upstream_variant_reruns_what_its_setting_feeds(done):
    """A variant that changes pair sampling samples its own pairs, so it needs its own pairwise
    scores, and those its own top-k from round 2 on: it runs the whole method again under
    results/ablations/<variant>/, beside a training-only variant, and the full run reruns nothing."""
    workdir, cfg, full = done
    jobs = dry_run(workdir, "ablations", "--config", UPSTREAM, configfiles=(cfg,))
    module = "ablation_delta_5_"  # the variant's rules: the workflow's own, renamed
    counts = Counter(rule.removeprefix(module) for rule, _ in jobs if rule.startswith(module))
    full_counts = Counter(rule for rule, _ in full)
    # pairs.delta reaches the fusion-pairwise fit (its judged pairs), not the data: the data are
    # the full method's files, linked; the teachers are fitted again
    needed = {"init_checkpoint", "fit_fusion_pointwise", "fit_fusion_pairwise", "index", "retrieve",
              "pointwise", "sample_pairs", "pairwise", "gather", "train", "evaluate"}
    assert set(counts) == needed
    for rule in needed - {"gather", "evaluate"}:  # everything the full method's rounds ran, again
        assert counts[rule] == full_counts[rule], rule
    assert counts["gather"] == 4 and counts["evaluate"] == 2  # what training reads; the rounds (not iteration 0)
    # the training-only variant as before; nothing of the full method's run
    others = Counter(rule for rule, _ in jobs if not rule.startswith(module))
    assert others == {"ablation_train": 2, "ablation_index": 2, "ablation_evaluate": 2, "ablation_table": 1,
                      "ablation_figure": 1, "ablation_shared_data": 3}
    shared = sorted(outs[0] for rule, outs in jobs if rule == "ablation_shared_data")
    assert shared == [f"results/ablations/delta-5/data/{n}.parquet" for n in ("corpus", "qrels", "queries")]
    for rule, outputs in jobs:
        if rule.startswith(module):
            assert all(o.startswith("results/ablations/delta-5/") for o in outputs), (rule, outputs)
    commands = snakemake(workdir, "-n", "-p", "ablations", "--config", UPSTREAM, configfiles=(cfg,)).stdout
    samples = [line for line in commands.splitlines() if " sample-pairs " in line]
    assert len(samples) == 2 and all(" --delta 5 " in line for line in samples)
    # its pairs are scored by its own pairwise teacher (fitted again), not the full method's
    scoring = [line for line in commands.splitlines() if " pairwise --pairs results/ablations/delta-5/" in line]
    assert len(scoring) == 2 and all("--model results/ablations/delta-5/teachers/pairwise/model " in line
                                     for line in scoring)
    table = next(line for line in commands.splitlines() if " ablation-table " in line)
    assert "--run 13 delta-5 2 test results/ablations/delta-5/iter-2/eval/test/run.parquet" in table
    assert "--run 13 no-kd 2 test results/ablations/no-kd/iter-2/eval/test/run.parquet" in table
    # the default target plans none of it
    assert dry_run(workdir, "--config", UPSTREAM, configfiles=(cfg,)) == []


def test_a_variant_takes_the_stages_its_setting_does_not_reach(done):
    """pairs.per_query reaches neither the data nor the fusion teachers: the variant links both
    from the full method's run and fits nothing; its first own job is iteration 0's checkpoint."""
    workdir, cfg, _ = done
    variant = "ablations={run: [ppq-5], variants: {ppq-5: {pairs: {per_query: 5}}}}"
    jobs = dry_run(workdir, "ablations", "--config", variant, configfiles=(cfg,))
    rules = Counter(rule for rule, _ in jobs)
    assert rules["ablation_shared_data"] == 3 and rules["ablation_shared_teacher"] == 2
    assert not {r for r in rules if r.endswith(("prepare", "fit_fusion_pointwise", "fit_fusion_pairwise"))}
    assert rules["ablation_ppq_5_init_checkpoint"] == 1
    commands = snakemake(workdir, "-n", "-p", "ablations", "--config", variant, configfiles=(cfg,)).stdout
    links = sorted(line.split(" link ", 1)[1].split(" > ")[0] for line in commands.splitlines() if " link --src" in line)
    assert links == sorted([f"--src results/data/{n}.parquet --out results/ablations/ppq-5/data/{n}.parquet"
                            for n in ("corpus", "queries", "qrels")] +
                           [f"--src results/teachers/{k}/model --out results/ablations/ppq-5/teachers/{k}/model"
                            for k in ("pointwise", "pairwise")])
    scoring = [line for line in commands.splitlines() if " pointwise --topk results/ablations/ppq-5/" in line]
    assert scoring and all("--model results/ablations/ppq-5/teachers/pointwise/model" in line for line in scoring)


def test_which_stages_a_variant_shares():
    import copy

    base = copy.deepcopy(CONFIG)  # the embedded default: fusion teachers, fitted without mining
    assert base["teachers"]["pointwise"]["fit"]["method"] == "fusion"
    mining = copy.deepcopy(CONFIG)  # cross-encoder and bert-pairwise fits, on iteration 0's negatives
    for kind in ("pointwise", "pairwise"):
        del mining["teachers"][kind]["fit"]["method"]

    def shared(cfg, spec):
        return ablations.shared_stages({**cfg, "ablations": {"variants": {"v": spec}}})["v"]

    assert shared(base, {"pairs": {"per_query": 5}}) == ["data", "teachers"]
    assert shared(base, {"student": {"dim": 64}}) == ["data", "teachers"]  # the fusion fit reads no student
    assert shared(mining, {"student": {"dim": 64}}) == ["data"]  # the mined negatives do
    assert shared(mining, {"pairs": {"per_query": 5}}) == ["data", "teachers"]
    assert shared(mining, {"retrieve": {"top_k": 50}}) == ["data"]
    assert shared(base, {"pairs": {"delta": 5}}) == ["data"]
    assert shared(base, {"teachers": {"pointwise": {"fit": {"heldout": 0.5}}}}) == ["data"]
    assert shared(base, {"seed": 7}) == [] and shared(base, {"train_split": "test"}) == []
    assert "v" not in ablations.shared_stages({**base, "ablations": {"variants": {"v": {"train": {"lr": 1e-3}}}}})


def test_paper_config_ablations_evaluate_every_split(tmp_path):
    from test_paper_config import PAPER, make_standins

    overlay = write_config(tmp_path / "overlay.yaml", {"data_dir": str(make_standins(tmp_path / "data")),
                                                       "ablations": {"run": ["no-pair"]}})
    proc = snakemake(tmp_path, "-n", "-p", "ablations", configfiles=(PAPER, overlay))
    counts = Counter(rule for rule, _ in dry_run(tmp_path, "ablations", configfiles=(PAPER, overlay)))
    assert (counts["ablation_train"], counts["ablation_index"], counts["ablation_evaluate"]) == (2, 2, 2 * 3)
    table = next(line for line in proc.stdout.splitlines() if " ablation-table " in line)
    assert "--measures dev RR@10 R@1000 --measures dl19 nDCG@10 --measures dl20 nDCG@10" in table
    assert "--run 13 no-pair 2 dl20 results/ablations/no-pair/iter-2/eval/dl20/run.parquet" in table
