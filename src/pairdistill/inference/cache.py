"""Exported-model artifacts, built once per weights and verified on every load.

An artifact is a directory ``<cache_dir>/<task>-<backend>-<quantize>-<key16>/`` holding the
exported model file(s) and ``meta.json``. The key hashes everything the export depends on: the
fingerprint of the source weights (sha256 of config.json and every weights file), the task, the
backend, the quantisation, the calibration batches (static int8) and the versions of the
libraries that wrote or read it. ``meta.json`` records the key and the sha256 of each file, so a
file that was truncated or altered after it was written is rebuilt, never used; new weights give
a new key, hence a new artifact (and the stale one from the same source is removed).

A build writes into a temporary sibling directory and renames it into place, so a reader never
sees half an artifact, and two jobs that build the same one at once both end with a complete one.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable, Iterable

FORMAT = 1  # bump when the layout or the export recipe changes: every artifact is rebuilt
META = "meta.json"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
_fingerprints: dict[tuple, str] = {}


def _sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def weight_files(model_dir: str | Path) -> list[Path]:
    """config.json and the weights files of a Hugging Face model directory (recursively)."""
    root = Path(model_dir)
    files = [p for p in root.rglob("*") if p.is_file() and
             (p.name == "config.json" and p.parent == root or p.suffix in _WEIGHT_SUFFIXES)]
    if not any(p.suffix in _WEIGHT_SUFFIXES for p in files):
        raise FileNotFoundError(f"{root}: no weights file (*.safetensors, *.bin, ...) to export")
    return sorted(files)


def fingerprint(model_dir: str | Path) -> str:
    """sha256 over the names and contents of :func:`weight_files`; memoised per (size, mtime)."""
    root = Path(model_dir).resolve()
    files = weight_files(root)
    stamp = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    if stamp in _fingerprints:
        return _fingerprints[stamp]
    h = hashlib.sha256()
    for p in files:
        h.update(str(p.relative_to(root)).encode() + b"\0" + _sha256_file(p).encode() + b"\n")
    _fingerprints[stamp] = h.hexdigest()
    return _fingerprints[stamp]


def versions(modules: Iterable[str]) -> dict[str, str]:
    out = {}
    for name in modules:
        mod = __import__(name)
        out[name] = str(getattr(mod, "__version__", "?"))
    return out


def artifact_key(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _verify(entry: Path, key: str) -> bool:
    try:
        meta = json.loads((entry / META).read_text())
    except (OSError, ValueError):
        return False
    if meta.get("key") != key or not meta.get("files"):
        return False
    for name, digest in meta["files"].items():
        f = entry / name
        if not f.is_file() or _sha256_file(f) != digest:
            return False
    return True


def _remove(path: Path) -> None:
    if path.exists():
        trash = path.with_name(f".trash-{path.name}-{uuid.uuid4().hex[:8]}")
        try:
            os.replace(path, trash)  # out of the way atomically, then deleted at leisure
        except OSError:
            return
        shutil.rmtree(trash, ignore_errors=True)


def get_or_build(cache_dir: str | Path, name: str, identity: dict,
                 build: Callable[[Path], None], *, log: Callable[[str], None] | None = None) -> tuple[Path, bool]:
    """The verified artifact directory for ``identity`` and whether it was built just now.

    ``build(tmp_dir)`` writes the model file(s) into an empty directory; every regular file it
    leaves there is checksummed into meta.json. ``name`` is a readable prefix of the directory
    name (task-backend-quantize); an artifact with the same prefix but another key (the weights
    changed, or a library version) is removed once the new one is in place.
    """
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    key = artifact_key({"format": FORMAT, **identity})
    entry = cache / f"{name}-{key[:16]}"
    if entry.exists():
        if _verify(entry, key):
            return entry, False
        if log:
            log(f"inference: {entry} is corrupt or incomplete; rebuilding it")
        _remove(entry)
    tmp = cache / f".tmp-{entry.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        build(tmp)
        files = {str(p.relative_to(tmp)): _sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        if not files:
            raise RuntimeError(f"inference: building {entry.name} wrote no file")
        meta = {"key": key, "identity": identity, "files": files, "format": FORMAT}
        (tmp / META).write_text(json.dumps(meta, indent=1, sort_keys=True))
        try:
            os.replace(tmp, entry)
        except OSError:  # another process put a complete one there first
            if not _verify(entry, key):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    source = identity.get("source_path")
    for other in cache.glob(f"{name}-*"):
        if other != entry and other.is_dir():
            try:
                if json.loads((other / META).read_text()).get("identity", {}).get("source_path") == source:
                    _remove(other)  # built from an earlier version of the same weights
            except (OSError, ValueError):
                pass
    return entry, True
