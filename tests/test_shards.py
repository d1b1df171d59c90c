"""Query shards, resumable scoring parts, the teacher-score cache and gathering."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pairdistill import io, preemption, shards, stages, synthetic

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------
# Shard assignment

def test_shard_names_round_trip_and_reject_bad_names():
    assert shards.shard_names(3) == ["000-of-003", "001-of-003", "002-of-003"]
    assert shards.parse_shard("007-of-016") == (7, 16)
    for bad in ("3-of-3", "x-of-4", "001of004", "-1-of-2"):
        with pytest.raises(ValueError, match="bad shard name"):
            shards.parse_shard(bad)


def test_shard_of_is_a_fixed_hash_of_the_query_id():
    # sha1("1185869")[:8] as a big-endian integer, computed independently
    import hashlib

    expected = int(hashlib.sha1(b"1185869").hexdigest()[:16], 16) % 16
    assert shards.shard_of("1185869", 16) == expected
    # independent of which other queries exist or their order
    ids = [f"q{i}" for i in range(500)]
    masks = [shards.in_shard(ids, name) for name in shards.shard_names(4)]
    assert (np.sum(masks, axis=0) == 1).all()  # a partition
    reversed_masks = [shards.in_shard(ids[::-1], name)[::-1] for name in shards.shard_names(4)]
    for a, b in zip(masks, reversed_masks):
        assert (a == b).all()
    assert all(m.sum() > 80 for m in masks)  # roughly balanced
    assert shards.in_shard(ids, None).all()


# --------------------------------------------------------------------------------------------
# score_in_parts

def _keys(n):
    return pd.DataFrame({"query_id": [f"q{i // 5}" for i in range(n)], "doc_id": [f"d{i}" for i in range(n)]})


def test_score_in_parts_skips_finished_parts(tmp_path):
    keys, calls = _keys(23), []

    def score(chunk):
        calls.append(len(chunk))
        return {"s": np.array([float(d[1:]) for d in chunk["doc_id"]])}

    out = tmp_path / "scores.parquet"
    first = shards.score_in_parts(keys, score, out, part_rows=10, identity="t", log=lambda m: None)
    assert calls == [10, 10, 3]
    assert first["s"].tolist() == list(range(23))
    # a rerun (e.g. after a kill before the output was written) scores nothing again
    (shards.parts_dir(out) / "part-000002.parquet").unlink()  # the part in progress at the kill
    calls.clear()
    again = shards.score_in_parts(keys, score, out, part_rows=10, identity="t", log=lambda m: None)
    assert calls == [3]
    pd.testing.assert_frame_equal(first, again)
    shards.clear_parts(out)
    assert not shards.parts_dir(out).exists()


def test_parts_of_other_inputs_are_discarded(tmp_path):
    out, logged = tmp_path / "scores.parquet", []
    shards.score_in_parts(_keys(10), lambda c: {"s": np.zeros(len(c))}, out, part_rows=4, identity="a",
                          log=logged.append)
    for keys, identity in ((_keys(10), "b"), (_keys(11), "b")):  # another teacher; other rows
        calls = []
        shards.score_in_parts(keys, lambda c: calls.append(len(c)) or {"s": np.ones(len(c))}, out,
                              part_rows=4, identity=identity, log=logged.append)
        assert sum(calls) == len(keys)
    assert sum("discarding parts" in m for m in logged) == 2


# --------------------------------------------------------------------------------------------
# Scoring stages on a synthetic collection with tiny random teachers

N_DOCS = 3000


@pytest.fixture(scope="module")
def collection(tmp_path_factory, minilm_dir):
    root = tmp_path_factory.mktemp("synthetic")
    paths = synthetic.write_collection(root, n_queries=120, n_docs=N_DOCS, doc_words=(8, 20))
    for name in shards.shard_names(2):
        synthetic.write_topk(paths["queries"], N_DOCS, root / f"topk-{name}.parquet", k=10, shard=name)
    return {"root": root, **paths, **synthetic.tiny_teachers(root, minilm_dir)}


def _pointwise_cmd(c, shard: str, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pairdistill", "--threads", "1", "pointwise",
            "--topk", str(c["root"] / f"topk-{shard}.parquet"), "--corpus", str(c["corpus"]),
            "--queries", str(c["queries"]), "--qrels", str(c["qrels"]), "--out", str(out), "--split", "train",
            "--model", c["pointwise"], "--family", "cross-encoder", "--max-length", "48",
            "--batch-size", "8", *extra]


def _env():
    env = {k: v for k, v in os.environ.items() if k not in (preemption.ENV, preemption.GROUP_ENV)}
    return {**env, "PYTHONPATH": str(REPO / "src")}


@pytest.mark.slow  # five scoring processes, one killed
def test_killed_scoring_job_resumes_and_gathers_row_for_row(collection, tmp_path):
    c = collection
    plain, resumed = tmp_path / "plain", tmp_path / "resumed"
    for d in (plain, resumed):
        d.mkdir()
    for name in shards.shard_names(2):
        subprocess.run(_pointwise_cmd(c, name, plain / f"{name}.parquet", "--part-rows", "16"), check=True,
                       env=_env(), capture_output=True)

    # shard 0: SIGKILLed right after its 3rd part is on disk (PAIRDISTILL_KILL_AFTER; not in a
    # session of its own, so the job alone), then the same command rerun
    victim = resumed / "000-of-002.parquet"
    cmd = _pointwise_cmd(c, "000-of-002", victim, "--part-rows", "16")
    killed = subprocess.run(cmd, env={**_env(), preemption.ENV: "pointwise:3"}, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    parts = shards.parts_dir(victim)
    done_at_kill = len(list(parts.glob("part-*.parquet")))
    total_parts = -(-len(io.read_table(c["root"] / "topk-000-of-002.parquet")) // 16)
    assert done_at_kill == 3 < total_parts
    assert not victim.exists()
    rerun = subprocess.run(cmd, env=_env(), capture_output=True, text=True, check=True)
    assert f"resuming: {done_at_kill} of" in rerun.stdout
    assert not parts.exists()  # removed once the output is written
    subprocess.run(_pointwise_cmd(c, "001-of-002", resumed / "001-of-002.parquet", "--part-rows", "16"),
                   check=True, env=_env(), capture_output=True)

    gathered = {}
    for d in (plain, resumed):
        stages.gather([str(d / f"{n}.parquet") for n in shards.shard_names(2)], "pointwise", str(d / "all.parquet"))
        gathered[d] = io.read_table(d / "all.parquet", "pointwise")
    pd.testing.assert_frame_equal(gathered[plain], gathered[resumed])
    shard_rows = sum(len(io.read_table(plain / f"{n}.parquet")) for n in shards.shard_names(2))
    assert len(gathered[plain]) == shard_rows
    assert json.loads(io.read_metadata(resumed / "all.parquet")["teacher"])["family"] == "cross-encoder"


def test_pointwise_cache_reuses_the_same_teachers_scores_only(collection, tmp_path):
    c = collection
    shard = "000-of-002"
    first = stages.pointwise(str(c["root"] / f"topk-{shard}.parquet"), str(c["corpus"]), str(c["queries"]),
                             str(c["qrels"]), str(tmp_path / "it1.parquet"), split="train", model=c["pointwise"],
                             family="cross-encoder", max_length=48, batch_size=8)
    assert not first["cached"].any()
    # round 2's top-k: half of each list retrieved again, half new
    topk = io.read_table(c["root"] / f"topk-{shard}.parquet", "run")
    keep = topk["rank"] <= 5
    topk.loc[~keep, "doc_id"] = [f"d{(int(d[1:]) + 1) % N_DOCS}" for d in topk.loc[~keep, "doc_id"]]
    io.write_table(topk, "run", tmp_path / "topk2.parquet")
    args = (str(tmp_path / "topk2.parquet"), str(c["corpus"]), str(c["queries"]), str(c["qrels"]))
    second = stages.pointwise(*args, str(tmp_path / "it2.parquet"), split="train", model=c["pointwise"],
                              family="cross-encoder", max_length=48, batch_size=8,
                              cache=[str(tmp_path / "it1.parquet")])
    old = first.set_index(["query_id", "doc_id"])["teacher_score"]
    new = second.set_index(["query_id", "doc_id"])
    reusable = new.index.isin(old.index)
    assert (new["cached"].to_numpy() == reusable).all() and 0 < reusable.sum() < len(new)
    np.testing.assert_array_equal(new.loc[reusable, "teacher_score"].to_numpy(),
                                  old.loc[new.index[reusable]].to_numpy())
    fresh = stages.pointwise(*args, str(tmp_path / "fresh.parquet"), split="train", model=c["pointwise"],
                             family="cross-encoder", max_length=48, batch_size=8)
    merged = second.merge(fresh, on=["query_id", "doc_id"], suffixes=("", "_fresh"))
    np.testing.assert_allclose(merged["teacher_score"], merged["teacher_score_fresh"], rtol=1e-4, atol=1e-6)
    # another token budget is another teacher: nothing reused
    other = stages.pointwise(*args, str(tmp_path / "other.parquet"), split="train", model=c["pointwise"],
                             family="cross-encoder", max_length=40, batch_size=8,
                             cache=[str(tmp_path / "it1.parquet")])
    assert not other["cached"].any()
    # so is another scoring dtype (teachers.pointwise.precision), and it is recorded with the scores
    bf16 = stages.pointwise(*args, str(tmp_path / "bf16.parquet"), split="train", model=c["pointwise"],
                            family="cross-encoder", max_length=48, batch_size=8, precision="bf16",
                            cache=[str(tmp_path / "it1.parquet")])
    assert not bf16["cached"].any()
    assert json.loads(io.read_metadata(tmp_path / "bf16.parquet")["teacher"])["precision"] == "bf16"


def test_pairwise_cache_serves_a_pair_in_either_order(collection, tmp_path):
    c = collection
    pairs = pd.DataFrame({"query_id": ["q0", "q0", "q2"], "doc_a": ["d1", "d3", "d5"], "doc_b": ["d2", "d4", "d6"],
                          "rank_a": [1, 2, 1], "rank_b": [2, 3, 2], "n_candidates": 3, "n_sampled": [2, 2, 1]})
    io.write_table(pairs, "pairs", tmp_path / "pairs1.parquet")
    kw = dict(model=c["pairwise"], family="bert-pairwise", max_length=64, batch_size=4, both_orders=True)
    first = stages.pairwise(str(tmp_path / "pairs1.parquet"), str(c["corpus"]), str(c["queries"]),
                            str(tmp_path / "pw1.parquet"), **kw)
    swapped = pairs.copy()
    swapped[["doc_a", "doc_b"]] = pairs[["doc_b", "doc_a"]].to_numpy()
    swapped.loc[2, "doc_b"] = "d7"  # a new pair
    io.write_table(swapped, "pairs", tmp_path / "pairs2.parquet")
    second = stages.pairwise(str(tmp_path / "pairs2.parquet"), str(c["corpus"]), str(c["queries"]),
                             str(tmp_path / "pw2.parquet"), cache=[str(tmp_path / "pw1.parquet")], **kw)
    assert second["cached"].tolist() == [True, True, False]
    np.testing.assert_array_equal(second["p_ab"][:2], first["p_ba"][:2])
    np.testing.assert_array_equal(second["p_ba"][:2].astype("float32"), first["p_ab"][:2])
    np.testing.assert_allclose(second["prob"][:2], 1 - first["prob"][:2], atol=1e-6)
    # single-order scores cannot serve a both-orders request
    single = stages.pairwise(str(tmp_path / "pairs1.parquet"), str(c["corpus"]), str(c["queries"]),
                             str(tmp_path / "single.parquet"), **{**kw, "both_orders": False})
    assert single["p_ba"].isna().all()
    again = stages.pairwise(str(tmp_path / "pairs1.parquet"), str(c["corpus"]), str(c["queries"]),
                            str(tmp_path / "pw3.parquet"), cache=[str(tmp_path / "single.parquet")], **kw)
    assert not again["cached"].any()


def test_teacher_cache_report(tmp_path):
    for it, flags in ((1, [False, False]), (2, [True, False])):
        d = tmp_path / f"iter-{it}"
        d.mkdir()
        frame = pd.DataFrame({"query_id": "q", "doc_id": ["a", "b"], "retriever_rank": [1, 2],
                              "retriever_score": [2.0, 1.0], "teacher_score": [1.0, 0.0], "teacher_rank": [1, 2],
                              "cached": flags}).astype({"retriever_rank": "Int32"})
        io.write_table(frame, "pointwise", d / "pointwise.parquet")
    table = stages.teacher_cache_report([str(tmp_path / f"iter-{i}/pointwise.parquet") for i in (1, 2)],
                                        str(tmp_path / "cache.tsv"))
    assert table[["iteration", "teacher", "rows", "reused"]].values.tolist() == [[1, "pointwise", 2, 0],
                                                                                 [2, "pointwise", 2, 1]]
    assert table["hit_rate"].tolist() == [0.0, 0.5]
    assert (tmp_path / "cache.tsv").read_text().splitlines()[0] == "iteration\tteacher\trows\treused\thit_rate"


def test_a_shard_without_queries_runs_through_every_stage(collection, tmp_path):
    """More shards than queries, or an unlucky hash, leave a shard empty: its jobs write empty
    files of the right schema and gathering skips nothing."""
    from pairdistill.students import colbert

    c = collection
    empty = colbert.search("unused-checkpoint", "unused-index", {}, 10, ncells=1, centroid_score_threshold=0.5,
                           ndocs=64)
    io.write_table(empty, "run", tmp_path / "topk.parquet")
    teachers = dict(family="cross-encoder", max_length=48, batch_size=8)
    stages.pointwise(str(tmp_path / "topk.parquet"), str(c["corpus"]), str(c["queries"]), str(c["qrels"]),
                     str(tmp_path / "pointwise.parquet"), split="train", model=c["pointwise"], **teachers)
    stages.sample_pairs(str(tmp_path / "pointwise.parquet"), str(tmp_path / "pairs.parquet"), delta=4,
                        pairs_per_query=3, seed=0)
    stages.pairwise(str(tmp_path / "pairs.parquet"), str(c["corpus"]), str(c["queries"]),
                    str(tmp_path / "pairwise.parquet"), model=c["pairwise"], family="bert-pairwise", max_length=48,
                    batch_size=8, both_orders=True)
    for name in ("pointwise", "pairs", "pairwise"):
        assert len(io.read_table(tmp_path / f"{name}.parquet", name)) == 0
    full = stages.pointwise(str(c["root"] / "topk-000-of-002.parquet"), str(c["corpus"]), str(c["queries"]),
                            str(c["qrels"]), str(tmp_path / "full.parquet"), split="train", model=c["pointwise"],
                            **teachers)
    rows = stages.gather([str(tmp_path / "pointwise.parquet"), str(tmp_path / "full.parquet")], "pointwise",
                         str(tmp_path / "gathered.parquet"))
    assert rows == len(full)
    pd.testing.assert_frame_equal(io.read_table(tmp_path / "gathered.parquet", "pointwise"),
                                  io.read_table(tmp_path / "full.parquet", "pointwise"))


def test_parts_survive_a_part_size_change_and_a_damaged_part_is_rescored(tmp_path):
    keys, calls, logged = _keys(20), [], []

    def score(chunk):
        calls.append(len(chunk))
        return {"s": np.arange(len(chunk), dtype=float)}

    out = tmp_path / "scores.parquet"
    shards.score_in_parts(keys, score, out, part_rows=8, identity="t", log=logged.append)
    (shards.parts_dir(out) / "part-000002.parquet").unlink()  # in progress at a kill
    (shards.parts_dir(out) / "part-000001.parquet").write_bytes(b"PAR1 truncated")  # a crash mid-write
    calls.clear()
    again = shards.score_in_parts(keys, score, out, part_rows=4, identity="t", log=logged.append)
    assert calls == [8, 4]  # the damaged part and the missing one, in the parts' own size
    assert len(again) == 20
    assert any("parts' own size 8" in m for m in logged) and any("unreadable part" in m for m in logged)
