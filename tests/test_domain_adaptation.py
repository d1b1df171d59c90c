"""Zero-shot domain adaptation as configs, planned with snakemake -n: configs/domain-adaptation.yaml
(the paper's Table 4: flan-t5-xl teachers on a BEIR target) on stand-in files, configs/adapt-cranfield.yaml
(the SciFact run's retriever and re-based teachers on Cranfield's derived splits), and the start-up
errors of source_run, teachers.<kind>.rebase and query_splits."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
import yaml

from workflow import DATA_DIR, REPO, drop_inference_flags, planned_jobs, snakemake, write_config

PAPER_DA = REPO / "configs" / "domain-adaptation.yaml"
CRANFIELD = REPO / "configs" / "adapt-cranfield.yaml"
NO_TRAINING_JOBS = {"fit_teacher", "mine_negatives", "fit_fusion_pointwise", "fit_fusion_pairwise"}


def make_source_run(root: Path) -> Path:
    """A finished run's results directory as far as planning reads it: the last checkpoint and the
    two fitted fusion teachers' metadata."""
    (root / "iter-2" / "checkpoint").mkdir(parents=True)
    (root / "iter-2" / "checkpoint" / "config.json").write_text("{}")
    for kind, family in (("pointwise", "fusion"), ("pairwise", "fusion-pairwise")):
        d = root / "teachers" / kind / "model"
        d.mkdir(parents=True)
        (d / "pairdistill_teacher.json").write_text(json.dumps({"kind": kind, "family": family}))
    return root


def make_beir_standin(root: Path, name: str, splits=("train", "test")) -> None:
    d = root / name
    (d / "qrels").mkdir(parents=True)
    (d / "corpus.jsonl").write_text("".join(json.dumps({"_id": f"d{i}", "title": "", "text": f"passage {i}"}) + "\n"
                                            for i in range(6)))
    (d / "queries.jsonl").write_text("".join(json.dumps({"_id": f"{s}{i}", "text": f"query {i}"}) + "\n"
                                             for s in splits for i in range(4)))
    for s in splits:
        (d / "qrels" / f"{s}.tsv").write_text("query-id\tcorpus-id\tscore\n"
                                              + "".join(f"{s}{i}\td{i}\t1\n" for i in range(4)))


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    return make_source_run(tmp_path_factory.mktemp("scifact-run") / "results")


@pytest.fixture(scope="module")
def standins(tmp_path_factory):
    root = tmp_path_factory.mktemp("da-data")
    make_beir_standin(root, "fiqa")
    make_beir_standin(root, "climate-fever", splits=("test",))
    return root


def _plan(workdir, *configs, **overlay):
    extra = write_config(workdir / "overlay.yaml", overlay)
    proc = snakemake(workdir, "-n", "-p", configfiles=(*configs, extra), check=False)
    out = proc.stdout + proc.stderr
    return proc.returncode, out


def _commands(out: str, stage: str) -> list[str]:
    return [line for line in out.splitlines() if re.search(rf"-m pairdistill --threads \d+ {stage} ", line)]


def test_adapt_cranfield_plan(tmp_path, source_run):
    code, out = _plan(tmp_path, CRANFIELD, data_dir=str(DATA_DIR), source_run=str(source_run))
    assert code == 0, out[-3000:]
    counts = Counter(rule for rule, _ in planned_jobs(out))
    assert counts["rebase_teacher"] == 2 and counts["train"] == 2 and counts["evaluate"] == 3
    assert counts["corpus_baselines"] == 1 and counts["rerank_teacher"] == 2 and counts["pair_accuracy"] == 1
    assert not NO_TRAINING_JOBS & set(counts) and "rerank_plain_fusion" not in counts
    prepare = _commands(out, "prepare")[0]
    assert "--splits adapt heldout" in prepare and "--seed 13" in prepare
    spec = json.loads(re.search(r"--query-splits '([^']*)'", prepare).group(1))
    assert spec == {"adapt": {"from": "test", "share": 0.5}, "heldout": {"from": "test", "rest_of": ["adapt"]}}
    rebase = sorted(_commands(out, "rebase-fusion"))
    assert [f"--teacher {source_run}/teachers/{k}/model" in c for c, k in zip(rebase, ("pairwise", "pointwise"))] == [True] * 2
    # the pairwise teacher takes the corpus embeddings of the re-based pointwise one (its input)
    assert drop_inference_flags(rebase[0]).endswith("--reuse results/teachers/pointwise/model > logs/rebase_teacher/pairwise.log 2>&1")
    assert "--reuse" not in rebase[1]
    init = _commands(out, "init-checkpoint")[0]
    assert f"--base {source_run}/iter-2/checkpoint" in init and "--projection random" in init
    for cmd in _commands(out, "train"):
        assert "--use-labels False" in cmd and "--split adapt" in cmd
    for cmd in _commands(out, "pointwise"):
        assert "--add-positives False" in cmd and "--model results/teachers/pointwise/model" in cmd
        assert "--split adapt" in cmd and "--family fusion" in cmd
    assert all("--model results/teachers/pairwise/model" in c for c in _commands(out, "pairwise"))
    outputs = {o for _, outs in planned_jobs(out) for o in outs}
    assert {"results/iter-2/eval/heldout/metrics.parquet", "results/teachers/pointwise/model",
            "results/baselines/metrics.parquet"} <= outputs
    assert all("heldout" in c for c in _commands(out, "evaluate") + _commands(out, "corpus-baselines"))


def test_source_run_relative_to_the_working_directory(tmp_path):
    make_source_run(tmp_path / "finished" / "results")
    code, out = _plan(tmp_path, CRANFIELD, data_dir=str(DATA_DIR), source_run="finished/results")
    assert code == 0, out[-3000:]
    assert f"--base {tmp_path}/finished/results/iter-2/checkpoint" in _commands(out, "init-checkpoint")[0]


@pytest.mark.parametrize("overlay, line", [
    ({}, "student.init: '{source_run}/iter-2/checkpoint' names {source_run}, but source_run is not set"),
    ({"source_run": "/nowhere/results"}, "source_run: /nowhere/results is not a directory"),
    ({"teachers": {"pointwise": {"model": "fit"}}},
     "teachers.pointwise.rebase: re-bases a fitted fusion teacher of another run given by path"),
    ({"teachers": {"pairwise": {"model": "{source_run}/teachers/pointwise/model"}}},
     "teachers.pairwise.rebase: {src}/teachers/pointwise/model is not a fitted fusion-pairwise teacher directory "
     "(family 'fusion')"),
    ({"teachers": {"pointwise": {"model": "{source_run}/iter-2/checkpoint"}}},
     "teachers.pointwise.rebase: {src}/iter-2/checkpoint is not a fitted fusion teacher directory "
     "(no pairdistill_teacher.json)"),
    ({"teachers": {"pointwise": {"family": "monot5"}}},
     "teachers.pointwise.rebase: a re-based teacher is a fusion teacher; teachers.pointwise.family is 'monot5'"),
    ({"query_splits": {"adapt": {"share": 0.7}, "other": {"from": "test", "share": 0.4}}},
     "query_splits: the shares of 'test' (adapt, other) add up to 1.1, more than all its queries"),
    ({"query_splits": {"test": {"from": "test", "share": 0.5}}},
     "query_splits.test: the collection has a split of that name"),
    ({"query_splits": {"heldout": {"rest_of": ["adopt"]}}},
     "query_splits.heldout.rest_of: 'adopt' is not a derived split (adapt, heldout)"),
])
def test_bad_adaptation_settings_stop_in_one_line(tmp_path, source_run, overlay, line):
    config = {"data_dir": str(DATA_DIR), **({"source_run": str(source_run)} if overlay else {}), **overlay}
    code, out = _plan(tmp_path, CRANFIELD, **config)
    assert code != 0
    line = line.replace("{src}", str(source_run))
    assert any(line in x for x in out.splitlines()), out[-3000:]


def test_a_schema_refusal_names_the_share(tmp_path, source_run):
    code, out = _plan(tmp_path, CRANFIELD, data_dir=str(DATA_DIR), source_run=str(source_run),
                      query_splits={"adapt": {"share": 1.5}})
    assert code != 0 and "1.5" in out and "share" in out


def test_default_plan_has_no_derived_splits_and_no_rebase(tmp_path):
    code, out = _plan(tmp_path, data_dir=str(DATA_DIR))
    assert code == 0, out[-3000:]
    prepare = _commands(out, "prepare")[0]
    assert prepare.endswith("--out-dir \"$(dirname results/data/corpus.parquet)\" > logs/prepare/prepare.log 2>&1")
    assert "--splits test train" in prepare
    assert "rebase" not in out and "fit_fusion_pointwise" in out


def test_paper_domain_adaptation_plan(tmp_path, standins, source_run):
    code, out = _plan(tmp_path, PAPER_DA, data_dir=str(standins), source_run=str(source_run))
    assert code == 0, out[-3000:]
    counts = Counter(rule for rule, _ in planned_jobs(out))
    paper = yaml.safe_load(PAPER_DA.read_text())
    shards, rounds = paper["shards"], paper["iteration"]
    assert counts["pointwise"] == counts["pairwise"] == shards * rounds and counts["train"] == rounds
    assert not NO_TRAINING_JOBS & set(counts) and "rebase_teacher" not in counts
    assert "corpus_baselines" not in counts  # no fusion teacher: no BM25 / bi-encoder baselines
    for cmd in _commands(out, "train"):
        assert "--use-labels False" in cmd and "--split train" in cmd and "--nway 64" in cmd
    point, pair = _commands(out, "pointwise"), _commands(out, "pairwise")
    assert point and all("--model google/flan-t5-xl --family instruct-pointwise" in c and "--prompt" in c
                         and "--add-positives False" in c and "--max-length 180" in c for c in point)
    # (a prompt holds newlines, so a printed command spans lines: its first line is checked)
    assert pair and all("--model google/flan-t5-xl --family instruct-pairwise" in c and "--max-length 360" in c
                        and "--prompt 'Which document is more relevant" in c for c in pair)
    rerank = _commands(out, "rerank-pointwise") + _commands(out, "rerank-pairwise") + _commands(out, "pair-accuracy")
    assert len(rerank) == 3 and all("--family instruct-" in c for c in rerank)
    init = _commands(out, "init-checkpoint")[0]
    assert f"--base {source_run}/iter-2/checkpoint" in init and "--doc-maxlen 300" in init
    outputs = {o for _, outs in planned_jobs(out) for o in outs}
    assert f"results/iter-{rounds}/eval/test/metrics.parquet" in outputs
    assert all("--eval-set fiqa/test" in c for c in _commands(out, "evaluate"))


@pytest.mark.parametrize("overlay, train, evaluated", [
    ({"train_split": "test"}, "--split test", "test"),
    ({"train_split": "adapt", "eval_split": "heldout",
      "query_splits": {"adapt": {"from": "test", "share": 0.5}, "heldout": {"from": "test", "rest_of": ["adapt"]}}},
     "--split adapt", "heldout"),
])
def test_paper_config_on_a_target_without_train_split(tmp_path, standins, source_run, overlay, train, evaluated):
    """Climate-FEVER has a test split only: the two ways the config's comments give."""
    code, out = _plan(tmp_path, PAPER_DA, data_dir=str(standins), source_run=str(source_run),
                      dataset="climate-fever", **overlay)
    assert code == 0, out[-3000:]
    assert all(train in c and "--use-labels False" in c for c in _commands(out, "train"))
    assert all(f"--eval-set climate-fever/{evaluated}" in c for c in _commands(out, "evaluate"))
