"""Training settings at start-up: one line naming the key, before any job runs (``snakemake -n``),
for a micro-batch that does not divide the batch, a precision the job's resources cannot give, more
GPUs than the machine shows, a mined contrastive term without its file; and the plans they make."""

from __future__ import annotations

import pytest

from workflow import DATA_DIR, snakemake, write_config


def _dry(tmp_path, overlay, *args):
    cfg = write_config(tmp_path / "overlay.yaml", {"data_dir": str(DATA_DIR), **overlay})
    proc = snakemake(tmp_path, "-n", *args, configfiles=(cfg,), check=False)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.parametrize("overlay, env, line", [
    ({"train": {"micro_batch": 3}}, {}, "train.micro_batch: 3 does not divide train.batch_size 8"),
    ({"train": {"precision": "fp16"}}, {},
     "train.precision: fp16 needs a GPU, and resources.train.gpu is 0 (use fp32 or bf16, or give training a GPU)"),
    ({"resources": {"train": {"gpu": 2}}}, {"CUDA_VISIBLE_DEVICES": "0"},
     "resources.train.gpu: 2 GPUs asked for, but this machine shows 1"),
    ({"resources": {"train": {"gpu": 4}}, "train": {"batch_size": 8, "micro_batch": 4}}, {},
     "train.micro_batch: 4 does not divide the 2 queries of each of resources.train.gpu 4 processes"),
    ({"resources": {"train": {"gpu": 3}}}, {}, "train.batch_size: 8 queries do not split evenly over resources.train.gpu 3"),
    ({"train": {"contrastive_negatives": "mined"}}, {},
     "train.mined_negatives: contrastive_negatives mined needs a negatives file"),
    ({"train": {"contrastive_negatives": "mined", "mined_negatives": "/nowhere/negatives.parquet"}}, {},
     "train.mined_negatives: /nowhere/negatives.parquet does not exist"),
    ({"teachers": {"pairwise": {"precision": "fp16"}}}, {},
     "teachers.pairwise.precision: fp16 needs a GPU, and resources.pairwise.gpu is 0"),
    ({"ablations": {"variants": {"small": {"train": {"micro_batch": 5}}}}}, {},
     "ablations.variants.small.train.micro_batch: 5 does not divide ablations.variants.small.train.batch_size 8"),
])
def test_a_training_setting_that_cannot_work_stops_the_plan_in_one_line(tmp_path, monkeypatch, overlay, env, line):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    args = ("ablations",) if "ablations" in overlay else ()
    code, out = _dry(tmp_path, overlay, *args)
    assert code != 0
    assert [x for x in out.splitlines() if x.startswith(line)], out[-2000:]


def test_unknown_precision_is_named_by_the_schema(tmp_path):
    code, out = _dry(tmp_path, {"train": {"precision": "fp8"}})
    assert code != 0 and "fp8" in out and "precision" in out


def test_micro_batches_gpus_and_negatives_reach_the_training_command(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)  # a CPU machine submitting to GPU nodes: not checked
    negatives = tmp_path / "negatives.parquet"
    negatives.write_bytes(b"")
    code, out = _dry(tmp_path, {"resources": {"train": {"gpu": 2}},
                                "train": {"micro_batch": 2, "precision": "bf16", "contrastive_negatives": "mined",
                                          "mined_negatives": str(negatives), "mined_per_query": 4}},
                     "-p", "results/iter-1/checkpoint")
    assert code == 0, out[-3000:]
    (cmd,) = [x for x in out.splitlines() if " train --checkpoint" in x]
    for flag in ("--micro-batch 2", "--processes 2", "--precision bf16", "--contrastive-negatives mined",
                 f"--mined-negatives {negatives}", "--mined-per-query 4", "--grad-checkpointing 0"):
        assert flag in cmd, (flag, cmd)


def test_the_default_plans_one_process_over_the_whole_batch(tmp_path):
    import shlex

    from pairdistill.cli import build_parser

    code, out = _dry(tmp_path, {}, "-p", "results/iter-1/checkpoint")
    assert code == 0, out[-3000:]
    (cmd,) = [x for x in out.splitlines() if " train --checkpoint" in x]
    assert "--micro-batch 0 " in cmd and "--processes 0 " in cmd and "--contrastive-negatives teacher" in cmd
    # the job's own parser reads the rule's flags as the whole batch, one process, no mined file
    words = shlex.split(cmd.split("pairdistill", 1)[1].split(">")[0])
    a = build_parser().parse_args(words)
    assert (a.micro_batch, a.processes, a.mined_negatives, a.grad_checkpointing, a.precision) == \
        (None, 0, None, False, "auto")
