"""The paper's configuration (configs/msmarco-paper.yaml) planned end to end on stand-in files.

The stand-ins have the MS MARCO and BEIR formats and names, a few lines each: a dry run needs the
files to exist (prepare declares them as inputs), not to be large. Hub models are not needed to
plan: only what runs them loads them.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
import yaml

from workflow import REPO, dry_run, snakemake, write_config

PAPER = REPO / "configs" / "msmarco-paper.yaml"


def make_standins(root: Path) -> Path:
    paper = yaml.safe_load(PAPER.read_text())
    ms = root / paper["dataset"]
    ms.mkdir(parents=True)
    (ms / paper["files"]["collection"]).write_text("".join(f"{i}\tpassage number {i}\n" for i in range(20)))
    for split, name in paper["files"]["queries"].items():
        (ms / name).write_text("".join(f"{split}{i}\tquery {i} of {split}\n" for i in range(4)))
    for split, name in paper["files"]["qrels"].items():
        sep = " " if name.endswith(".txt") else "\t"  # TREC DL's qrels are space-separated
        (ms / name).write_text("".join(sep.join([f"{split}{i}", "0", str(i), "1"]) + "\n" for i in range(3)))
    for name in paper["beir_eval"]["datasets"]:
        d = root / name
        (d / "qrels").mkdir(parents=True)
        (d / "corpus.jsonl").write_text(json.dumps({"_id": "d1", "title": "", "text": "a passage"}) + "\n")
        (d / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "a query"}) + "\n")
        (d / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    lotte = paper["lotte_eval"]
    for topic in lotte["topics"]:
        d = root / lotte["root"] / topic / lotte["split"]
        d.mkdir(parents=True)
        (d / "collection.tsv").write_text("0\ta passage\n")
        for query_set in lotte["query_sets"]:
            (d / f"questions.{query_set}.tsv").write_text("0\ta question\n")
            (d / f"qas.{query_set}.jsonl").write_text(json.dumps({"qid": 0, "query": "a question", "answer_pids": [0]}) + "\n")
    qa = paper["qa_eval"]
    for path in [*qa["passages"].values(), *(spec["questions"] for spec in qa["datasets"].values())]:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
    for path in qa["passages"].values():
        (root / path).write_text("id\ttext\ttitle\n1\ta passage\tA title\n")
    for spec in qa["datasets"].values():
        (root / spec["questions"]).write_text('a question\t["an answer"]\n')
    return root


@pytest.fixture(scope="module")
def standins(tmp_path_factory):
    return make_standins(tmp_path_factory.mktemp("paper-data"))


def _plan(tmp_path, data_dir, **config):
    overlay = write_config(tmp_path / "overlay.yaml", {"data_dir": str(data_dir), **config})
    return dry_run(tmp_path, configfiles=(PAPER, overlay))


@pytest.mark.parametrize("shards", [4, 32])
def test_paper_config_plans_every_job_of_both_iterations(tmp_path, standins, shards):
    jobs = _plan(tmp_path, standins, shards=shards)
    counts = Counter(rule for rule, _ in jobs)
    beir = 13
    lotte = 6       # five topics and pooled, each with search and forum queries
    qa = 3          # NQ, TriviaQA, SQuAD over one passage collection
    assert dict(counts) == {
        "prepare": 1,
        "prepare_beir": beir,
        "init_checkpoint": 1,
        "index": 3,                     # iterations 0, 1, 2
        "index_beir": 3 * beir,
        "retrieve": 2 * shards,         # one job per shard and round
        "pointwise": 2 * shards,
        "sample_pairs": 2 * shards,
        "pairwise": 2 * shards,
        "gather": 2 * 4,                # four sharded stages per round
        "train": 2,
        "evaluate": 3 * 3,              # dev, DL19, DL20 for each of the three retrievers
        "evaluate_beir": 3 * beir,
        "prepare_lotte": lotte,
        "index_lotte": 3 * lotte,
        "evaluate_lotte": 3 * lotte * 2,
        "prepare_qa_passages": 1,
        "prepare_qa": qa,
        "index_qa": 3,
        "evaluate_qa": 3 * qa,
        "summary": 1,
        "figures": 1,                   # the report's figures
    }
    outputs = {o for _, outs in jobs for o in outs}
    assert f"results/iter-2/pairwise/shard-{shards - 1:03d}-of-{shards:03d}.parquet" in outputs
    assert {"results/iter-2/eval/dl20/metrics.parquet", "results/iter-1/beir/webis-touche2020/index",
            "results/iter-2/checkpoint", "results/teacher_cache.tsv",
            "results/iter-2/lotte/pooled/eval/forum/metrics.parquet", "results/iter-0/lotte/writing/index",
            "results/iter-1/qa/wiki/eval/squad/metrics.parquet", "results/iter-2/qa/wiki/index"} <= outputs


def test_round_two_scoring_reads_round_one_scores_of_its_shard(tmp_path, standins):
    proc = snakemake(tmp_path, "-n", "--printshellcmds",
                     configfiles=(PAPER, write_config(tmp_path / "o.yaml", {"data_dir": str(standins), "shards": 2})))
    out = proc.stdout
    cmds = [line for line in out.splitlines() if " pointwise --topk" in line and "iter-2" in line]
    assert len(cmds) == 2
    for cmd in cmds:
        shard = re.search(r"train_topk/shard-(\d+-of-\d+)", cmd).group(1)
        assert f"--cache results/iter-1/pointwise/shard-{shard}.parquet" in cmd.replace("'", "")
    # the paper's settings reach the jobs
    train = next(line for line in out.splitlines() if " train --checkpoint" in line)
    for flag in ("--nway 64", "--batch-size 32", "--lr 1e-05", "--lambda-kd 1.0", "--lambda-pair 3.0",
                 "--temperature 1.0", "--doc-maxlen 180", "--query-maxlen 32", "--unlabelled-queries True",
                 "--contrastive-negatives in_batch", "--precision auto"):
        assert flag in train, flag
    assert all("--num-partitions None" in line for line in out.splitlines() if " index --checkpoint" in line)
    assert "--pairs-per-query 50" in out and "--delta 10" in out and "--k 100 " in out
    # the authors' teacher token budgets
    assert all("--max-length 180" in line for line in out.splitlines() if " pointwise --topk" in line)
    assert all("--max-length 360" in line for line in out.splitlines() if " pairwise --pairs" in line)
    # teachers score in bf16 on a GPU (teachers.<kind>.precision auto)
    scoring = [line for line in out.splitlines() if " pointwise --topk" in line or " pairwise --pairs" in line]
    assert scoring and all("--precision auto" in line for line in scoring)
    # BEIR: ColBERTv2's query lengths per collection, kept in its index; ArguAna without self-matches
    index_beir = {re.search(r"results/iter-1/beir/([^/]+)/index", line).group(1): line
                  for line in out.splitlines() if " index --checkpoint results/iter-1/checkpoint" in line
                  and "/beir/" in line}
    assert "--query-maxlen 300 --drop-self-matches True" in index_beir["arguana"]
    assert "--query-maxlen 64 --drop-self-matches False" in index_beir["climate-fever"]
    assert "--query-maxlen 32 --drop-self-matches False" in index_beir["nfcorpus"]


def test_paper_resources_are_portable(tmp_path, standins):
    proc = snakemake(tmp_path, "-n", configfiles=(PAPER, write_config(tmp_path / "o.yaml",
                                                                      {"data_dir": str(standins), "shards": 2})))
    text = proc.stdout + proc.stderr
    blocks = re.findall(r"^(?:local)?rule (\w+):\n(.*?)(?=^\S|\Z)", text, flags=re.S | re.M)
    seen = {}
    for rule, body in blocks:
        m = re.search(r"resources: (.*)", body)
        if m and rule != "all":
            seen[rule] = m.group(1)
    assert "gpu=1" in seen["pairwise"] and "gpu=1" in seen["train"] and "gpu=0" in seen["sample_pairs"]
    assert not any("partition" in r or "account" in r for r in seen.values())


def test_missing_msmarco_file_is_named(tmp_path, standins):
    overlay = write_config(tmp_path / "o.yaml", {"data_dir": str(standins),
                                                 "files": {"qrels": {"dl20": "2020qrels-missing.txt"}}})
    proc = snakemake(tmp_path, "-n", configfiles=(PAPER, overlay), check=False)
    assert proc.returncode != 0
    assert "2020qrels-missing.txt" in proc.stdout + proc.stderr


def test_slurm_profile_plans_the_paper_run(tmp_path, standins):
    overlay = write_config(tmp_path / "o.yaml", {"data_dir": str(standins), "shards": 2})
    from workflow import SNAKEMAKE
    import os
    import subprocess

    proc = subprocess.run([SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
                           "--profile", str(REPO / "profiles" / "slurm"), "-n",
                           "--configfile", str(PAPER), str(overlay)],
                          capture_output=True, text=True, env=os.environ.copy(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "slurm_partition=gpu" in proc.stdout + proc.stderr


@pytest.mark.parametrize("files, message", [
    ({"queries": {"dl20": None}, "qrels": {"dl20": None}}, "split 'dl20' has no queries file: set `files.queries.dl20`"),
    ({"queries": {"dl20": None}}, "`files.qrels.dl20` has no queries file: set `files.queries.dl20`"),
    ({"qrels": {"dl20": None}}, "evaluation split 'dl20' has no qrels file (config key: files.qrels.dl20)"),
])
def test_incomplete_msmarco_files_stop_before_any_job(tmp_path, standins, files, message):
    paper = yaml.safe_load(PAPER.read_text())
    for key, change in files.items():  # drop one split's file from the paper's list
        paper["files"][key] = {s: f for s, f in paper["files"][key].items() if s not in change}
    config = write_config(tmp_path / "paper.yaml", {**paper, "data_dir": str(standins)})
    proc = snakemake(tmp_path, "-n", configfiles=(config,), check=False)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr
