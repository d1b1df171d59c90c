"""LoTTE and open-domain QA in the DAG: planned only when the config names a topic or a QA set,
each collection indexed once per round and each question set evaluated every round."""

from __future__ import annotations

from collections import Counter

import pytest

from test_lotte import write_topic
from test_qa import PASSAGES, QUESTIONS
from workflow import DATA_DIR, REPO, drop_inference_flags, dry_run, planned_jobs, snakemake, write_config

NEW_RULES = {"prepare_lotte", "index_lotte", "evaluate_lotte", "prepare_qa_passages", "prepare_qa", "index_qa",
             "evaluate_qa"}


@pytest.fixture(scope="module")
def zero_shot(tmp_path_factory):
    """Two LoTTE topics (one named pooled, as in the release) and DPR files for two QA sets."""
    root = tmp_path_factory.mktemp("zero-shot")
    for topic in ("pets", "pooled"):
        write_topic(root / "lotte", topic)
    (root / "dpr").mkdir()
    (root / "dpr" / "psgs.tsv").write_text(PASSAGES)
    (root / "dpr" / "nq.qa.csv").write_text(QUESTIONS)
    (root / "dpr" / "squad.qa.csv").write_text(QUESTIONS)
    return root


def _overlay(**sections):
    return {"data_dir": str(DATA_DIR), **sections}


def _sections(root):
    return {
        "lotte_eval": {"root": str(root / "lotte"), "topics": ["pets", "pooled"]},
        "qa_eval": {"passages": {"wiki": str(root / "dpr" / "psgs.tsv")},
                    "datasets": {"nq": {"passages": "wiki", "questions": str(root / "dpr" / "nq.qa.csv")},
                                 "squad": {"passages": "wiki", "questions": str(root / "dpr" / "squad.qa.csv")}},
                    "match": "squad"},
    }


def test_named_sets_add_their_jobs_and_nothing_else(tmp_path, zero_shot):
    (tmp_path / "default").mkdir()
    default = dry_run(tmp_path / "default", configfiles=(write_config(tmp_path / "d.yaml", _overlay()),))
    assert not {rule for rule, _ in default} & NEW_RULES
    overlay = write_config(tmp_path / "z.yaml", _overlay(**_sections(zero_shot)))
    proc = snakemake(tmp_path, "-n", "--printshellcmds", configfiles=(overlay,))
    jobs = planned_jobs(proc.stdout + proc.stderr)
    # the default's jobs are all still planned, the same ones; the rest are LoTTE's and QA's
    assert sorted(j for j in jobs if j[0] not in NEW_RULES) == sorted(default)
    assert Counter(rule for rule, _ in jobs if rule in NEW_RULES) == {
        "prepare_lotte": 2, "index_lotte": 3 * 2, "evaluate_lotte": 3 * 2 * 2,  # iterations 0-2, 2 topics, 2 sets
        "prepare_qa_passages": 1, "prepare_qa": 2, "index_qa": 3, "evaluate_qa": 3 * 2}  # one collection, 2 sets
    outputs = {o for _, outs in jobs for o in outs}
    assert {"results/lotte/pooled/qrels.parquet", "results/iter-0/lotte/pets/index",
            "results/iter-2/lotte/pooled/eval/forum/run.parquet", "results/iter-2/lotte/pooled/eval/forum/metrics.parquet",
            "results/qa/wiki/corpus.parquet", "results/qa/wiki/squad/answers.parquet", "results/iter-1/qa/wiki/index",
            "results/iter-2/qa/wiki/eval/nq/run.parquet", "results/iter-2/qa/wiki/eval/nq/metrics.parquet"} <= outputs
    out = proc.stdout
    summary = next(line for line in out.splitlines() if " summary --metrics" in line)
    assert "results/iter-1/lotte/pets/eval/search/metrics.parquet" in summary
    assert "results/iter-2/qa/wiki/eval/squad/metrics.parquet" in summary
    lotte_eval = next(line for line in out.splitlines() if " evaluate --checkpoint results/iter-1/checkpoint" in line
                      and "lotte/pooled" in line and "--split forum" in line)
    for flag in ("--measures Success@5", "--k 100", "--eval-set lotte/pooled/test/forum",
                 "--index results/iter-1/lotte/pooled/index", "--qrels results/lotte/pooled/qrels.parquet"):
        assert flag in lotte_eval.replace("'", ""), flag
    qa_eval = next(line for line in out.splitlines() if " evaluate-qa " in line and "iter-2" in line and "/nq/" in line)
    for flag in ("--k 5 20 100", "--match squad", "--eval-set qa/nq", "--corpus results/qa/wiki/corpus.parquet",
                 "--answers results/qa/wiki/nq/answers.parquet"):
        assert flag in qa_eval.replace("'", ""), flag
    index_qa = next(line for line in out.splitlines() if " index --checkpoint results/iter-0/checkpoint" in line
                    and "qa/wiki" in line)
    assert "--doc-maxlen 180" in index_qa


def test_a_dpr_student_indexes_every_evaluation_collection_with_its_faiss_settings(tmp_path, zero_shot):
    """Each index job of a DPR run, LoTTE's and QA's as the training collection's, builds the
    configured faiss index (an IVF one here), not the flat default of the command line."""
    ivf = {"index": {"dpr": {"type": "ivf", "nlist": 64, "nprobe": 8}}}
    overlay = write_config(tmp_path / "z.yaml", _overlay(**_sections(zero_shot), **ivf))
    proc = snakemake(tmp_path, "-n", "--printshellcmds",
                     configfiles=(REPO / "configs" / "dpr-scifact.yaml", overlay))  # the overlay last: over it
    index = [line for line in proc.stdout.splitlines() if " -m pairdistill --threads" in line and " index " in line]
    assert {next(p for p in ("/lotte/", "/qa/", "results/iter-") if p in line) for line in index} == {
        "/lotte/", "/qa/", "results/iter-"}
    assert len(index) == 3 + 6 + 3  # the training collection, 2 LoTTE topics and 1 QA collection, 3 retrievers each
    assert all(drop_inference_flags(line).endswith(("--dpr-index ivf --dpr-nlist 64 --dpr-nprobe 8 > " + line.rsplit(" > ", 1)[1]))
               for line in index)


@pytest.mark.parametrize("sections, line", [
    (lambda r: {"lotte_eval": {"root": str(r / "lotte"), "topics": ["pets", "science"]}},
     lambda r: f"LoTTE file {r / 'lotte' / 'science' / 'test' / 'collection.tsv'} does not exist "
               "(config key: lotte_eval.topics: science)"),
    (lambda r: {"lotte_eval": {"root": str(r / "nowhere"), "topics": ["pets"]}},
     lambda r: f"LoTTE directory {r / 'nowhere'} does not exist (config key: lotte_eval.root)"),
    (lambda r: {"qa_eval": {"passages": {"wiki": str(r / "dpr" / "psgs.tsv")},
                            "datasets": {"nq": {"passages": "wikipedia", "questions": str(r / "dpr" / "nq.qa.csv")}}}},
     lambda r: "qa_eval.datasets.nq.passages: 'wikipedia' is not a collection of qa_eval.passages (wiki)"),
    (lambda r: {"qa_eval": {"passages": {"wiki": str(r / "dpr" / "psgs.tsv")},
                            "datasets": {"tq": {"passages": "wiki", "questions": str(r / "dpr" / "tq.qa.csv")}}}},
     lambda r: f"QA file {r / 'dpr' / 'tq.qa.csv'} does not exist (config key: qa_eval.datasets.tq.questions)"),
])
def test_a_missing_file_or_unknown_collection_stops_before_any_job(tmp_path, zero_shot, sections, line):
    overlay = write_config(tmp_path / "z.yaml", _overlay(**sections(zero_shot)))
    proc = snakemake(tmp_path, "-n", configfiles=(overlay,), check=False)
    assert proc.returncode != 0
    assert line(zero_shot) in proc.stdout + proc.stderr


@pytest.mark.parametrize("sections, named", [
    ({"lotte_eval": {"query_sets": ["blog"]}}, "'blog' is not one of ['search', 'forum']"),
    ({"qa_eval": {"match": "regex"}}, "'regex' is not one of ['string', 'squad']"),
    ({"qa_eval": {"k": [0]}}, "instance['qa_eval']['k'][0]"),
])
def test_bad_settings_are_named(tmp_path, sections, named):
    proc = snakemake(tmp_path, "-n", configfiles=(write_config(tmp_path / "z.yaml", _overlay(**sections)),),
                     check=False)
    assert proc.returncode != 0
    assert named in proc.stdout + proc.stderr
