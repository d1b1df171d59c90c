"""Typed artifacts and atomic writes."""

from __future__ import annotations

import os

import pandas as pd
import pytest

from pairdistill import io


def _run_frame():
    return pd.DataFrame({"query_id": ["q"], "doc_id": ["d"], "rank": [1], "score": [0.5]})


def test_write_and_read_back_with_schema(tmp_path):
    io.write_table(_run_frame(), "run", tmp_path / "run.parquet")
    df = io.read_table(tmp_path / "run.parquet", "run")
    assert df.to_dict("records") == [{"query_id": "q", "doc_id": "d", "rank": 1, "score": 0.5}]
    with pytest.raises(ValueError, match="schema does not match 'pairs'"):
        io.read_table(tmp_path / "run.parquet", "pairs")


def test_missing_or_extra_columns_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"missing \['score'\], extra \['points'\]"):
        io.write_table(_run_frame().rename(columns={"score": "points"}), "run", tmp_path / "x.parquet")
    assert not list(tmp_path.iterdir())


def test_failed_write_leaves_nothing_and_stale_temporaries_are_removed(tmp_path):
    target = tmp_path / "out.parquet"
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert not list(tmp_path.iterdir())
    (tmp_path / ".out.parquet.abc.tmp").write_text("left by a killed job")
    io.write_table(_run_frame(), "run", target)
    assert [p.name for p in tmp_path.iterdir()] == ["out.parquet"]


def test_directory_outputs_replace_whole(tmp_path):
    target = tmp_path / "ckpt"
    for content in ("one", "two"):
        with io.atomic_path(target, is_dir=True) as tmp:
            (tmp / "weights").write_text(content)
    assert (target / "weights").read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_benchmark_report_reads_flat_and_nested_benchmark_files(tmp_path):
    from pairdistill.bench.benchmark_files import collect, report

    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "iter-1.tsv").write_text(header + "12.5\t0:00:12\t900.0\t1\t1\t1\t0\t0\t1\t10\n")
    (tmp_path / "pointwise" / "iter-1").mkdir(parents=True)
    for shard, seconds in (("shard-000-of-002", 3.0), ("shard-001-of-002", 4.0)):
        (tmp_path / "pointwise" / "iter-1" / f"{shard}.tsv").write_text(
            header + f"{seconds}\t0:00:03\t-\t1\t1\t1\t0\t0\t1\t3\n")
    jobs = collect(tmp_path)
    assert sorted(map(tuple, jobs[["rule", "job"]].values)) == [
        ("pointwise", "iter-1/shard-000-of-002"), ("pointwise", "iter-1/shard-001-of-002"), ("train", "iter-1")]
    assert jobs["seconds"].sum() == 19.5
    assert "total: 20 s (0.3 min) over 3 jobs" in report(tmp_path)


def test_link_artifact_shares_files_and_leaves_out_snakemake_markers(tmp_path):
    src = tmp_path / "teacher"
    (src / "sub").mkdir(parents=True)
    (src / "weights.bin").write_bytes(b"\x00\x01")
    (src / "sub" / "meta.json").write_text("{}")
    (src / ".snakemake_timestamp").write_text("")
    io.link_artifact(src, tmp_path / "variant" / "teacher")
    out = tmp_path / "variant" / "teacher"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["sub", "sub/meta.json", "weights.bin"]
    assert (out / "weights.bin").stat().st_ino == (src / "weights.bin").stat().st_ino  # a hard link, not a copy
    single = tmp_path / "corpus.parquet"
    single.write_bytes(b"PAR1")
    io.link_artifact(single, tmp_path / "variant" / "data" / "corpus.parquet")
    copy = tmp_path / "variant" / "data" / "corpus.parquet"
    assert copy.read_bytes() == b"PAR1"
    # a file is a copy: touching it (as Snakemake does a job's output) leaves the source's time
    assert copy.stat().st_ino != single.stat().st_ino
    before = single.stat().st_mtime_ns
    os.utime(copy)
    assert single.stat().st_mtime_ns == before
    assert not list((tmp_path / "variant").rglob("*.tmp"))
    with pytest.raises(FileNotFoundError, match="no such artifact"):
        io.link_artifact(tmp_path / "missing", tmp_path / "variant" / "missing")
    assert not (tmp_path / "variant" / "missing").exists()
