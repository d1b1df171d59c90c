"""student.arch dpr in the DAG (``snakemake -n``): the same jobs as ColBERT's, the DPR settings in
the init-checkpoint, index and train commands and nowhere else, the embedded default's commands
without them, and one line naming the key for a setting that cannot work; and (slow) one round of
the whole DAG with a tiny DPR student."""

from __future__ import annotations

import re

import pytest

from pairdistill import io, students

from workflow import DATA_DIR, REPO, drop_inference_flags, make_slice, planned_jobs, snakemake, tiny_overlay, write_config

DPR_CONFIG = REPO / "configs" / "dpr-scifact.yaml"
INIT_FLAGS = " --arch dpr --dpr-shared True --dpr-pooling mean --dpr-score cosine --dpr-scale 20.0"
INDEX_FLAGS = " --dpr-index flat --dpr-nlist 1024 --dpr-nprobe 32"
TRAIN_FLAGS = " --arch dpr"


def _plan(tmp_path, name, *configs, overlay=None, check=True):
    work = tmp_path / name
    work.mkdir()
    base = write_config(work / "overlay.yaml", {"data_dir": str(DATA_DIR), **(overlay or {})})
    proc = snakemake(work, "-n", "-p", configfiles=(*configs, base), check=check)  # the overlay last: over them
    return proc.returncode, proc.stdout + proc.stderr


def _commands(out: str) -> dict[str, list[str]]:
    """Every planned pairdistill command, by stage."""
    cmds = {}
    for line in out.splitlines():
        m = re.search(r'-m pairdistill --threads \d+ ([\w-]+) ', line)
        if m:
            cmds.setdefault(m.group(1), []).append(line.strip())
    return cmds


def test_dpr_plans_colberts_jobs_with_its_settings_in_three_commands(tmp_path):
    _, colbert = _plan(tmp_path, "colbert")
    _, dpr = _plan(tmp_path, "dpr", DPR_CONFIG)
    assert sorted(planned_jobs(dpr)) == sorted(planned_jobs(colbert))
    assert len(planned_jobs(dpr)) > 30
    c, d = _commands(colbert), _commands(dpr)
    assert c.keys() == d.keys()
    (init,) = d["init-checkpoint"]
    assert init.endswith(INIT_FLAGS + " > logs/init_checkpoint/iter-0.log 2>&1")
    assert len(d["index"]) == 3 and all(INDEX_FLAGS + " > logs/index/" in drop_inference_flags(x) for x in d["index"])
    assert len(d["train"]) == 2 and all(TRAIN_FLAGS + " > logs/train/" in x for x in d["train"])
    # nothing else differs: without the DPR flags every command is ColBERT's (whose iteration 0 also
    # reads the corpus, for its pca projection)
    stripped = {stage: sorted(x.replace(INIT_FLAGS, "").replace(INDEX_FLAGS, "").replace(TRAIN_FLAGS, "")
                              for x in cmds) for stage, cmds in d.items()}
    (colbert_init,) = c["init-checkpoint"]
    assert stripped.pop("init-checkpoint") == [colbert_init.replace(" --corpus results/data/corpus.parquet", " ")]
    assert stripped == {stage: sorted(cmds) for stage, cmds in c.items() if stage != "init-checkpoint"}
    # the embedded default's commands carry no DPR flag
    assert not any("--dpr-" in x or "--arch" in x for cmds in c.values() for x in cmds)


@pytest.mark.parametrize("overlay, line", [
    ({"index": {"dpr": {"type": "ivf", "nlist": 16, "nprobe": 64}}}, "index.dpr.nprobe: 64 is more than index.dpr.nlist 16"),
])
def test_a_dpr_setting_that_cannot_work_stops_the_plan_in_one_line(tmp_path, overlay, line):
    code, out = _plan(tmp_path, "bad", DPR_CONFIG, overlay=overlay, check=False)
    assert code != 0
    assert [x for x in out.splitlines() if x.startswith(line)], out[-2000:]


def test_an_unknown_arch_or_dpr_key_is_named_by_the_schema(tmp_path):
    code, out = _plan(tmp_path, "arch", overlay={"student": {"arch": "splade"}}, check=False)
    assert code != 0 and "splade" in out and "arch" in out
    code, out = _plan(tmp_path, "key", overlay={"student": {"dpr": {"poolin": "mean"}}}, check=False)
    assert code != 0 and "poolin" in out


@pytest.mark.slow
@pytest.mark.skipif(not (DATA_DIR / "scifact").is_dir(), reason="SciFact not found")
def test_one_round_with_a_tiny_dpr_student(tmp_path, tiny_bert_dir):
    """Iteration 1 of the whole DAG in one shard: a DPR iteration 0, its faiss index, retrieval,
    both teachers, training, and evaluation of both iterations."""
    make_slice(tmp_path / "data")
    # teacher reranking and pair accuracy read iteration 0's run only, whatever the student (the
    # ColBERT runs of test_pipeline cover them): left out here
    cfg = tiny_overlay(tmp_path / "data", tiny_bert_dir, iteration=1,
                       **{"student.arch": "dpr", "student.dpr": {"shared": False},
                          "evaluate.teacher_rerank.enabled": False})
    overlay = write_config(tmp_path / "overlay.yaml", cfg)
    snakemake(tmp_path, configfiles=(overlay,), timeout=900)
    for n in (0, 1):
        assert students.arch_of(tmp_path / f"results/iter-{n}/checkpoint") == "dpr"
        assert (tmp_path / f"results/iter-{n}/index/index.faiss").is_file()
        run = io.read_table(tmp_path / f"results/iter-{n}/eval/test/run.parquet", "run")
        assert run["query_id"].nunique() == 12 and run.groupby("query_id")["rank"].max().min() == 50
    s = students.read_dpr_settings(tmp_path / "results/iter-1/checkpoint")
    assert (s.shared, s.query_maxlen, s.doc_maxlen) == (False, 16, 48)
    loss = io.read_table(tmp_path / "results/iter-1/train_loss.parquet", "loss")
    assert len(loss) > 0 and (loss["loss_pair"] > 0).all()
    topk = io.read_table(tmp_path / "results/iter-1/train_topk.parquet", "run")
    assert topk["query_id"].nunique() == 24 and (topk.groupby("query_id").size() == 8).all()
    assert "iteration 1" in (tmp_path / "results/summary.tsv").read_text()
    assert '"arch": "dpr"' in (tmp_path / "logs/train/iter-1.log").read_text()  # the job's own arguments
    # a second run has nothing to do
    again = snakemake(tmp_path, "-n", configfiles=(overlay,))
    assert "Nothing to be done" in again.stdout + again.stderr
