"""The resumable training state: what a state must match to be resumed (:func:`run_fingerprint`),
writing it atomically every ``save_every`` steps (:func:`save_state`), finding the latest matching
one (:func:`load_state`), every RNG the loop draws from (:func:`_rng_states`), and removing the
states once the checkpoint and loss curve are written (:func:`remove_state_dir`).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from .. import io, preemption, runtime
from .batches import Group, groups_digest


STATE_FORMAT = 1

_STATE_NAME = re.compile(r"^step-(\d+)$")


def run_fingerprint(checkpoint_in: str, hyper: dict, groups: list[Group], query_texts: dict[str, str],
                    digest: str | None = None, n_groups: int | None = None) -> dict:
    """What a resumable state must match to be resumed: the run's inputs and hyperparameters.
    ``digest`` and ``n_groups`` stand for the groups of every process when there are several."""
    fp = {"format": STATE_FORMAT, "checkpoint_in": str(checkpoint_in),
          "checkpoint_digest": runtime.model_fingerprint(runtime.resolve_model(checkpoint_in), sample_bytes=None),
          "groups_digest": digest or groups_digest(groups, query_texts),
          "n_groups": len(groups) if n_groups is None else n_groups,
          "hyperparameters": {k: hyper[k] for k in sorted(hyper)}}
    fp["digest"] = hashlib.sha256(json.dumps(fp, sort_keys=True, default=str).encode()).hexdigest()
    return fp


def _state_dirs(state_dir: Path) -> list[tuple[int, Path]]:
    """Complete states (``step-N``), oldest first; temporaries (``.step-N.*.tmp``) are not listed."""
    if not state_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in state_dir.iterdir() if p.is_dir() and (m := _STATE_NAME.match(p.name))]
    return sorted(found)


def _remove_temporaries(state_dir: Path) -> None:
    if state_dir.is_dir():
        for tmp in state_dir.glob(".step-*.tmp"):
            shutil.rmtree(tmp, ignore_errors=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_state(state_dir: str | Path, step: int, payload: dict, meta: dict) -> Path:
    """Write ``state_dir/step-<step>`` atomically (:func:`io.atomic_path`, synced to disk before the
    rename), then drop older states.

    A kill at any point leaves either the previous state or the new one complete and loadable.
    """
    state_dir = Path(state_dir)
    final = state_dir / f"step-{step:09d}"
    with io.atomic_path(final, is_dir=True) as tmp:
        torch.save(payload, tmp / "state.pt")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
        for f in (tmp / "state.pt", tmp / "meta.json", tmp):
            _fsync(f)
    _fsync(state_dir)
    for _, old in _state_dirs(state_dir):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    preemption.durable(f"training state at step {step}")
    return final


def load_state(state_dir: str | Path, fingerprint: dict) -> dict | None:
    """The latest state in ``state_dir`` if its fingerprint matches the run's, else None.

    A state that does not match (other inputs or hyperparameters) or cannot be read is deleted,
    with a log line; so are temporaries left by a save that was killed.
    """
    state_dir = Path(state_dir)
    _remove_temporaries(state_dir)
    found = _state_dirs(state_dir)
    for step, path in reversed(found):
        try:
            meta = json.loads((path / "meta.json").read_text())
        except (OSError, ValueError) as exc:
            print(f"ignoring training state {path}: unreadable ({exc}); deleting it", flush=True)
            shutil.rmtree(path, ignore_errors=True)
            continue
        theirs = meta.get("fingerprint", {})
        if theirs.get("digest") != fingerprint["digest"]:
            differ = sorted(k for k in set(theirs) | set(fingerprint)
                            if k != "digest" and theirs.get(k) != fingerprint.get(k))
            hyper = theirs.get("hyperparameters") or {}
            differ_h = sorted(k for k in set(hyper) | set(fingerprint["hyperparameters"])
                              if hyper.get(k) != fingerprint["hyperparameters"].get(k))
            print(f"ignoring training state {path} (step {step}): it was written for other inputs or "
                  f"hyperparameters (differs in {differ}{'; hyperparameters ' + str(differ_h) if differ_h else ''})"
                  f"; deleting it", flush=True)
            shutil.rmtree(path, ignore_errors=True)
            continue
        try:
            state = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
        except Exception as exc:  # noqa: BLE001 - a damaged state is dropped, never fatal
            print(f"ignoring training state {path}: unreadable ({exc}); deleting it", flush=True)
            shutil.rmtree(path, ignore_errors=True)
            continue
        for _, older in found:
            if older != path and older.exists():
                shutil.rmtree(older, ignore_errors=True)
        state["path"] = str(path)
        return state
    return None


def remove_state_dir(state_dir: str | Path) -> None:
    """Delete the states and temporaries this loop wrote, then ``state_dir`` itself if that leaves it empty."""
    state_dir = Path(state_dir)
    if not state_dir.exists():
        return
    _remove_temporaries(state_dir)
    for _, path in _state_dirs(state_dir):
        shutil.rmtree(path, ignore_errors=True)
    try:
        state_dir.rmdir()
    except OSError:
        print(f"training state directory {state_dir} holds other files; left in place", flush=True)


def _rng_states(loop_rng: np.random.Generator) -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "loop": loop_rng.bit_generator.state}


def _restore_rng_states(states: dict, loop_rng: np.random.Generator) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if states.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    loop_rng.bit_generator.state = states["loop"]


def find_state(state_dir: str | Path, fingerprint: dict | None, main: bool, world: int) -> dict | None:
    """The state this run resumes from, or None: the main process chooses it (:func:`load_state`,
    which cleans up around it) and the other processes read the one it chose."""
    resumed = load_state(state_dir, fingerprint) if main else None
    if world > 1:
        import torch.distributed as dist

        path = [resumed["path"] if resumed is not None else None]
        dist.broadcast_object_list(path, src=0)
        if not main and path[0] is not None:
            resumed = torch.load(Path(path[0]) / "state.pt", map_location="cpu", weights_only=False)
            resumed["path"] = path[0]
    return resumed


def own_share(state: dict, rank: int, world: int) -> dict:
    """This process's data position and RNG states in a saved ``state`` (with several, its entry of ``ranks``)."""
    return state["ranks"][rank] if world > 1 else state


def resumed_position(state: dict, rank: int, world: int) -> tuple[list[dict], int, float, dict]:
    """(loss rows so far, step, training seconds so far, this process's data position) of a saved ``state``."""
    mine = own_share(state, rank, world)
    data = {"epoch": int(mine["epoch"]), "pos": int(mine["pos"]),
            "order": np.asarray(mine["order"]) if mine["order"] is not None else None}
    return list(state["rows"]), int(state["step"]), float(state["elapsed_s"]), data
