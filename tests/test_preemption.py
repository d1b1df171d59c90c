"""PAIRDISTILL_KILL_AFTER: a job killed with SIGKILL right after its N-th durable part or state,
with its process group when that is a session of its own, else alone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pairdistill import preemption

# writes 5 parts of 2 rows (or 3 training states) as the stage named in argv; a sibling `sleep`
# in its process group stands for Snakemake and the other jobs
WORKER = textwrap.dedent("""
    import subprocess, sys
    from pathlib import Path
    import numpy as np, pandas as pd
    from pairdistill import preemption, shards

    stage, out = sys.argv[1], Path(sys.argv[2])
    sibling = subprocess.Popen(["sleep", "60"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    (out.parent / "sibling.pid").write_text(str(sibling.pid))
    preemption.arm(stage)
    if stage == "train":
        from pairdistill.train.state import save_state
        for step in (2, 4, 6):
            save_state(out.parent / "states", step, {"step": step}, {"step": step})
    else:
        keys = pd.DataFrame({"query_id": [f"q{i}" for i in range(10)]})
        shards.score_in_parts(keys, lambda c: {"score": np.zeros(len(c))}, out, part_rows=2, identity="t",
                              log=lambda line: print(line, flush=True))
    sibling.kill()
""")


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, killed but not reaped, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _sibling(tmp_path: Path) -> int:
    return int((tmp_path / "sibling.pid").read_text())


def _run(tmp_path: Path, stage: str, value: str | None, **popen) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in (preemption.ENV, preemption.GROUP_ENV)}
    if value is not None:
        env[preemption.ENV] = value
    cmd = [sys.executable, "-c", WORKER, stage, str(tmp_path / "out.parquet")]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, **popen)


def _parts(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / ".out.parquet.parts").iterdir())


def test_kills_its_session_right_after_the_nth_part(tmp_path):
    proc = _run(tmp_path, "pointwise", "pointwise:2", start_new_session=True)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    assert _parts(tmp_path) == ["manifest.json", "part-000000.parquet", "part-000001.parquet"]
    assert "part 2/5 scored" in proc.stdout and "part 3/5" not in proc.stdout
    assert not _alive(_sibling(tmp_path))  # the whole group went


def test_kills_right_after_the_nth_training_state(tmp_path):
    proc = _run(tmp_path, "train", "train:2", start_new_session=True)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    assert sorted(p.name for p in (tmp_path / "states").iterdir()) == ["step-000000004"]


def test_outside_a_session_of_its_own_only_the_job_dies(tmp_path):
    # a session leader starts the worker as the leader of a group of its own, not the session's
    leader = textwrap.dedent(f"""
        import subprocess, sys
        print(subprocess.run([sys.executable, "-c", {WORKER!r}, *sys.argv[1:]], process_group=0).returncode)
    """)
    env = {**os.environ, preemption.ENV: "pairwise:1"}
    proc = subprocess.run([sys.executable, "-c", leader, "pairwise", str(tmp_path / "out.parquet")], env=env,
                          capture_output=True, text=True, timeout=120, start_new_session=True)
    assert proc.stdout.split()[-1] == str(-signal.SIGKILL), proc.stdout + proc.stderr
    assert _parts(tmp_path) == ["manifest.json", "part-000000.parquet"]
    sibling = _sibling(tmp_path)
    try:
        assert _alive(sibling)  # the worker's group (its child) was spared
    finally:
        os.kill(sibling, signal.SIGKILL)


def test_a_process_in_a_group_of_its_own_kills_the_group_of_the_jobs_first_process(tmp_path):
    """As under torch.distributed.run: the job's first process (the launcher, armed, leading its
    session's group) starts the one that makes the point durable in a group of its own; the cue
    kills the launcher's group (Snakemake and every job, in the tests), not merely that process."""
    launcher = textwrap.dedent(f"""
        import subprocess, sys
        from pairdistill import preemption
        preemption.arm("launcher")
        subprocess.run([sys.executable, "-c", {WORKER!r}, *sys.argv[1:]], process_group=0)
        print("the launcher outlived the cue", flush=True)
    """)
    env = {k: v for k, v in os.environ.items() if k != preemption.GROUP_ENV}
    env[preemption.ENV] = "pointwise:2"
    proc = subprocess.run([sys.executable, "-c", launcher, "pointwise", str(tmp_path / "out.parquet")], env=env,
                          capture_output=True, text=True, timeout=120, start_new_session=True)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    assert "outlived" not in proc.stdout and f"{preemption.ENV}: killing process group" in proc.stdout
    assert _parts(tmp_path) == ["manifest.json", "part-000000.parquet", "part-000001.parquet"]
    sibling = _sibling(tmp_path)  # in the worker's own group: the launcher's kill does not reach it
    os.kill(sibling, signal.SIGKILL)


@pytest.mark.parametrize("value", [None, "pairwise:1", "train:1"])
def test_unset_or_naming_another_stage_kills_nothing(tmp_path, value):
    proc = _run(tmp_path, "pointwise", value, start_new_session=True)
    assert proc.returncode == 0, proc.stderr
    assert len(_parts(tmp_path)) == 6


@pytest.mark.parametrize("value", ["pointwise", "pointwise:0", "pointwise:x"])
def test_a_malformed_value_is_refused(monkeypatch, value):
    monkeypatch.setenv(preemption.ENV, value)
    with pytest.raises(ValueError, match=preemption.ENV):
        preemption.arm("pointwise")
