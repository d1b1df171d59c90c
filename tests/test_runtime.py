"""GPU claims on a multi-GPU machine: one flock per GPU, held for the life of the process.

Every claim that must outlive a call runs in its own Python process, as pipeline jobs do.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from pairdistill import runtime

SRC = str(Path(__file__).resolve().parents[1] / "src")

# Claims a GPU, prints its index, then holds the claim until stdin closes (or it is killed).
HOLDER = """
import sys
from pairdistill.runtime import claim_gpu
print(claim_gpu(int(sys.argv[1]), sys.argv[2], poll_s=0.05, timeout_s=float(sys.argv[3])), flush=True)
sys.stdin.read()
"""


def _holder(n_gpus: int, lock_dir: Path, timeout_s: float = 30.0) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH")) if p)}
    return subprocess.Popen([sys.executable, "-c", HOLDER, str(n_gpus), str(lock_dir), str(timeout_s)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def _claimed(proc: subprocess.Popen) -> int:
    line = proc.stdout.readline()
    if not line:
        raise AssertionError(f"holder exited without a claim: {proc.wait()} {proc.stderr.read()}")
    return int(line)


def _end(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate()


@pytest.fixture
def holders():
    procs: list[subprocess.Popen] = []
    yield procs
    for p in procs:
        _end(p)


@pytest.fixture(autouse=True)
def _no_claims_left():
    yield
    runtime._release_gpu_claims()


def test_separate_processes_get_different_gpus(tmp_path, holders):
    holders += [_holder(2, tmp_path), _holder(2, tmp_path)]
    assert sorted(_claimed(p) for p in holders) == [0, 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairdistill-gpu-0.lock", "pairdistill-gpu-1.lock"]


def test_claim_is_kept_until_the_process_ends(tmp_path, holders):
    holders.append(_holder(3, tmp_path))
    first = _claimed(holders[0])
    # the parent takes another GPU, and asking again in the same process keeps its claim
    mine = runtime.claim_gpu(3, tmp_path, poll_s=0.05, timeout_s=1)
    assert mine != first
    assert runtime.claim_gpu(3, tmp_path, poll_s=0.05, timeout_s=1) == mine
    holders.append(_holder(3, tmp_path))
    assert _claimed(holders[1]) not in (first, mine)


def test_sigkilled_process_releases_its_gpu(tmp_path, holders):
    holders.append(_holder(1, tmp_path))
    assert _claimed(holders[0]) == 0
    with pytest.raises(TimeoutError):
        runtime.claim_gpu(1, tmp_path, poll_s=0.05, timeout_s=0.3)
    os.kill(holders[0].pid, signal.SIGKILL)
    holders[0].wait(timeout=10)
    assert holders[0].returncode == -signal.SIGKILL
    assert runtime.claim_gpu(1, tmp_path, poll_s=0.05, timeout_s=5) == 0


def test_waits_for_a_gpu_to_free_up(tmp_path, holders):
    holders.append(_holder(1, tmp_path))
    assert _claimed(holders[0]) == 0
    threading.Timer(0.5, holders[0].kill).start()
    start = time.monotonic()
    assert runtime.claim_gpu(1, tmp_path, poll_s=0.05, timeout_s=20) == 0
    assert time.monotonic() - start >= 0.4


def test_all_taken_times_out_with_a_clear_error(tmp_path, holders, capsys):
    holders += [_holder(2, tmp_path), _holder(2, tmp_path)]
    assert sorted(_claimed(p) for p in holders) == [0, 1]
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=r"no free GPU after waiting .*all 2 are claimed") as err:
        runtime.claim_gpu(2, tmp_path, poll_s=0.05, timeout_s=0.5)
    assert 0.5 <= time.monotonic() - start < 5
    assert str(tmp_path) in str(err.value)
    assert "waiting" in capsys.readouterr().err  # the wait is announced once, in the job's log


def test_lock_dir_is_created_and_bad_counts_are_refused(tmp_path):
    lock_dir = tmp_path / "nested" / "locks"
    assert runtime.claim_gpu(1, lock_dir, timeout_s=0) == 0
    assert (lock_dir / "pairdistill-gpu-0.lock").exists()
    with pytest.raises(ValueError):
        runtime.claim_gpu(0, tmp_path)


def test_existing_lock_file_owned_elsewhere_is_usable_read_only(tmp_path):
    path = tmp_path / "pairdistill-gpu-0.lock"
    path.touch()
    path.chmod(0o444)  # as a file left by another user: flock needs no write access
    assert runtime.claim_gpu(1, tmp_path, timeout_s=0) == 0


def test_device_without_gpus_is_unchanged(tmp_path, monkeypatch):
    monkeypatch.setenv(runtime.GPU_LOCK_DIR_ENV, str(tmp_path))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert runtime.device() == torch.device("cpu")
    assert runtime.device("cpu") == torch.device("cpu")
    assert runtime.device("cuda:1") == torch.device("cuda", 1)  # an explicit device is taken as given
    assert list(tmp_path.iterdir()) == []  # no claim without GPUs


def test_device_claims_only_when_several_gpus_and_no_scheduler(tmp_path, monkeypatch):
    """The CUDA calls are faked: which path device() takes, not what CUDA does."""
    monkeypatch.setenv(runtime.GPU_LOCK_DIR_ENV, str(tmp_path))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)

    # SLURM (or the user) chose the GPU: use it, claim nothing
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert runtime.device() == torch.device("cuda")
    assert list(tmp_path.iterdir()) == []

    # one GPU and no scheduler: nothing to choose
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert runtime.device() == torch.device("cuda")
    assert list(tmp_path.iterdir()) == []

    # four GPUs: claim one and make it the only visible one; CUDA then counts 1
    counts = iter([4, 1])
    monkeypatch.setattr(torch.cuda, "device_count", lambda: next(counts))
    monkeypatch.setattr(torch.cuda, "init", lambda: None)
    assert runtime.device() == torch.device("cuda", 0)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"
    assert (tmp_path / "pairdistill-gpu-0.lock").exists()
    assert runtime.device() == torch.device("cuda", 0)  # the claim is made once per process


def test_device_addresses_the_gpu_by_index_when_cuda_started_early(tmp_path, monkeypatch, holders):
    monkeypatch.setenv(runtime.GPU_LOCK_DIR_ENV, str(tmp_path))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    holders.append(_holder(2, tmp_path))
    assert _claimed(holders[0]) == 0
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)  # CUDA had started: it sees both
    monkeypatch.setattr(torch.cuda, "init", lambda: None)
    chosen = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    assert runtime.device() == torch.device("cuda", 1)
    assert chosen == [1]
    assert "CUDA_VISIBLE_DEVICES" not in os.environ


def test_device_claims_within_a_listed_subset_by_physical_id(tmp_path, monkeypatch, holders):
    """CUDA_VISIBLE_DEVICES=4,5 for the whole run: each job claims one of 4 and 5, by its id."""
    monkeypatch.setenv(runtime.GPU_LOCK_DIR_ENV, str(tmp_path))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    holders.append(_holder(1, tmp_path))  # another process holds lock "0": not ours to avoid
    assert _claimed(holders[0]) == 0
    counts = iter([2, 1])
    monkeypatch.setattr(torch.cuda, "device_count", lambda: next(counts))
    monkeypatch.setattr(torch.cuda, "init", lambda: None)
    assert runtime.device() == torch.device("cuda", 0)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "4"
    assert (tmp_path / "pairdistill-gpu-4.lock").exists()


def test_a_data_parallel_job_claims_its_gpus_all_or_none(tmp_path, holders):
    holders.append(_holder(3, tmp_path))
    taken = _claimed(holders[-1])  # another job holds one of the 3 GPUs
    got = runtime.claim_gpus(2, ["0", "1", "2"], tmp_path, poll_s=0.05, timeout_s=5)
    assert len(got) == 2 and str(taken) not in got
    runtime._release_gpu_claims()
    with pytest.raises(TimeoutError, match="3 free GPUs were not available together"):
        runtime.claim_gpus(3, ["0", "1", "2"], tmp_path, poll_s=0.05, timeout_s=0.3)
    # waiting for all three took none of the two free ones
    again = runtime.claim_gpus(2, ["0", "1", "2"], tmp_path, poll_s=0.05, timeout_s=5)
    assert sorted(again) == sorted(got)


def test_a_light_job_never_imports_torch_and_threads_still_reach_it(tmp_path):
    """gather (and the other jobs that need no model) skip torch's import; --threads set before
    torch is imported still caps torch's threads when a stage imports it later."""
    import pandas as pd

    from pairdistill import io

    shards = []
    for i in range(2):
        shards.append(tmp_path / f"shard-{i}.parquet")
        io.write_table(pd.DataFrame({"query_id": [f"q{i}"], "doc_id": ["d"], "rank": [1], "score": [1.0]}),
                       "run", shards[-1])
    code = (
        "import sys\n"
        "from pairdistill import cli, runtime\n"
        f"cli.main(['--threads', '1', 'gather', '--shards', {str(shards[0])!r}, {str(shards[1])!r},"
        f" '--schema', 'run', '--out', {str(tmp_path / 'run.parquet')!r}])\n"
        "assert 'torch' not in sys.modules, 'gather imported torch'\n"
        "import torch\n"
        "print(torch.get_num_threads())\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "1"
    assert len(pd.read_parquet(tmp_path / "run.parquet")) == 2


def test_jobs_load_transformers_models_without_importing_scikit_learn(tiny_cross_encoder_dir):
    """runtime.lean_transformers_import (cli.main's first call): a model loads and runs with no
    scikit-learn import (transformers 4.57 would import it for assisted generation only); scikit-learn
    itself still imports afterwards, for the libraries that use it."""
    code = f"""
import sys
from pairdistill import runtime
runtime.lean_transformers_import()
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
model = AutoModelForSequenceClassification.from_pretrained({tiny_cross_encoder_dir!r}).eval()
batch = AutoTokenizer.from_pretrained({tiny_cross_encoder_dir!r})(["a query"], ["a passage"], return_tensors="pt")
with torch.no_grad():
    assert torch.isfinite(model(**batch).logits).all()
from transformers.utils import is_sklearn_available
print("sklearn" in sys.modules, is_sklearn_available(), len(sys.meta_path))
import sklearn.metrics
print("sklearn" in sys.modules)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": SRC}, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, second = proc.stdout.split("\n")[:2]
    plain = subprocess.run([sys.executable, "-c", "import sys; print(len(sys.meta_path))"],
                           capture_output=True, text=True).stdout.strip()
    assert first == f"False False {plain}"  # and the hook removed itself once used
    assert second == "True"
