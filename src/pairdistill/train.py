"""Fine-tune ColBERT checkpoint n into n+1 with PairDistill's loss, in our own loop.

colbert-ai's trainer always wraps DDP and has no place for a pairwise term, so this loop drives
its ``ColBERT`` model class directly (query/doc encoders, MaxSim scoring) and saves a checkpoint
that stock colbert-ai indexes and searches.

One training group per query: ``nway`` passages from the pointwise-reranked list (the labelled
positive first when labels are used; then the passages of the sampled pairs; then the best
teacher-ranked rest), the pointwise teacher's scores for them, and the sampled pairs whose two
passages are both in the group with the pairwise teacher's P(d_i > d_j).

Queries without a labelled positive are skipped when labels are used, unless
``unlabelled_queries`` keeps them (``positive_index = -1``: they get the KD and pairwise terms
but no contrastive term), as with MS MARCO's ~800K distillation queries of which ~500K are labelled.

Preemption: with a ``state_dir`` the loop writes a resumable state every ``save_every`` optimizer
steps (model, AdamW, LR scheduler, every RNG, the data position and the loss rows so far), each
atomically, and a rerun with the same inputs and hyperparameters continues from it bit-exactly
(on CPU); the state directory is removed once the checkpoint and loss curve are written.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import io, runtime, student
from .losses import PairDistillLoss
from .progress import Progress


@dataclass
class Group:
    query_id: str
    doc_ids: list[str]
    teacher_scores: list[float]
    positive_index: int | None  # None without labels; -1 for a kept unlabelled query
    pairs: list[tuple[int, int, float]] = field(default_factory=list)  # (i, j, P(d_i > d_j))


def build_groups(pointwise: pd.DataFrame, pairwise: pd.DataFrame, positives: dict[str, set[str]], *,
                 nway: int, use_labels: bool, seed: int,
                 unlabelled_queries: bool = False) -> tuple[list[Group], dict]:
    """Training groups of exactly ``nway`` passages; returns them and counts of what was skipped.

    With ``use_labels``, a query needs a labelled positive in its list (the pointwise stage adds
    every labelled positive to it) and the other labelled positives are left out of the group,
    since the contrastive term would push them down as negatives. With ``unlabelled_queries``
    too, a query without one is kept with ``positive_index = -1``: its group is built from the
    teacher's ranked list as without labels, and the loss gives it no contrastive term.
    """
    rng = np.random.default_rng(seed)
    pairs_by_q = {q: df for q, df in pairwise.groupby("query_id", sort=False)}
    groups, skipped_short, skipped_unlabelled, kept_unlabelled = [], 0, 0, 0
    for qid, ranked in pointwise.sort_values(["query_id", "teacher_rank"]).groupby("query_id", sort=True):
        doc_ids = ranked["doc_id"].tolist()
        score_of = dict(zip(doc_ids, ranked["teacher_score"].astype(float)))
        pos = positives.get(qid, set())
        chosen: list[str] = []
        positive_index = None
        if use_labels:
            labelled = [d for d in doc_ids if d in pos]
            if labelled:
                chosen.append(labelled[0])  # the teacher's best-ranked labelled positive
                positive_index = 0
            elif unlabelled_queries:
                positive_index = -1
            else:
                skipped_unlabelled += 1
                continue
            pool = [d for d in doc_ids if d not in pos]
        else:
            pool = list(doc_ids)
        qpairs = pairs_by_q.get(qid)
        pool_set = set(pool)
        if qpairs is not None and len(qpairs):
            order = rng.permutation(len(qpairs))
            for a, b in qpairs[["doc_a", "doc_b"]].to_numpy()[order]:
                for d in (a, b):
                    if len(chosen) < nway and d in pool_set and d not in chosen:
                        chosen.append(d)
        for d in pool:
            if len(chosen) >= nway:
                break
            if d not in chosen:
                chosen.append(d)
        if len(chosen) < nway:
            skipped_short += 1
            continue
        index = {d: i for i, d in enumerate(chosen)}
        group_pairs = []
        if qpairs is not None:
            for a, b, p in qpairs[["doc_a", "doc_b", "prob"]].itertuples(index=False):
                if a in index and b in index:
                    group_pairs.append((index[a], index[b], float(p)))
        kept_unlabelled += positive_index == -1
        groups.append(Group(qid, chosen, [score_of[d] for d in chosen], positive_index, group_pairs))
    stats = {"groups": len(groups), "skipped_short_list": skipped_short,
             "skipped_no_positive": skipped_unlabelled, "unlabelled_groups": int(kept_unlabelled),
             "pairs_in_groups": sum(len(g.pairs) for g in groups),
             "pairs_sampled": int(len(pairwise))}
    return groups, stats


def _linear_schedule(optimizer, warmup_steps: int, total_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def in_batch_positive(positive_index: torch.Tensor, nway: int) -> torch.Tensor:
    """Group-local positive columns (B,) -> columns of the (B, B*nway) in-batch score matrix.

    Query b's positive is column ``b*nway + positive_index[b]``; an unlabelled query (-1) stays
    -1, so no column of the wide matrix (least of all the previous group's last passage) is taken
    as its positive.
    """
    rows = torch.arange(positive_index.shape[0], device=positive_index.device)
    return torch.where(positive_index >= 0, rows * nway + positive_index, torch.full_like(positive_index, -1))


def _maxsim(Q: torch.Tensor, D: torch.Tensor, D_mask: torch.Tensor) -> torch.Tensor:
    """ColBERT scores of every query against every passage: (nq, Lq, dim) x (nd, Ld, dim) -> (nq, nd)."""
    sim = torch.einsum("qid,pjd->qpij", Q, D)
    sim = sim.masked_fill(~D_mask.squeeze(-1)[None, :, None, :], -1e4)
    return sim.max(-1).values.sum(-1)


# --- resumable training state -------------------------------------------------------------------

STATE_FORMAT = 1
_STATE_NAME = re.compile(r"^step-(\d+)$")


def groups_digest(groups: list[Group], query_texts: dict[str, str]) -> str:
    """sha256 over every group (query and its text, positive, passages, teacher scores, pairs).

    Built from a few large buffers rather than per group, so ~800K groups take a few seconds.
    """
    from itertools import chain

    h = hashlib.sha256()
    h.update("\x1e".join(f"{g.query_id}\x1f{query_texts.get(g.query_id)}\x1f{g.positive_index}\x1f"
                          + "\x1f".join(g.doc_ids) for g in groups).encode())
    h.update(np.fromiter((len(g.teacher_scores) for g in groups), dtype=np.int64, count=len(groups)).tobytes())
    h.update(np.fromiter(chain.from_iterable(g.teacher_scores for g in groups), dtype=np.float64).tobytes())
    h.update(np.fromiter((len(g.pairs) for g in groups), dtype=np.int64, count=len(groups)).tobytes())
    h.update(np.fromiter(chain.from_iterable(x for g in groups for x in g.pairs), dtype=np.float64).tobytes())
    return h.hexdigest()


def run_fingerprint(checkpoint_in: str, hyper: dict, groups: list[Group], query_texts: dict[str, str]) -> dict:
    """What a resumable state must match to be resumed: the run's inputs and hyperparameters."""
    fp = {"format": STATE_FORMAT, "checkpoint_in": str(checkpoint_in),
          "checkpoint_digest": runtime.model_fingerprint(runtime.resolve_model(checkpoint_in), sample_bytes=None),
          "groups_digest": groups_digest(groups, query_texts), "n_groups": len(groups),
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


# --- the loop -------------------------------------------------------------------------------------

def train(checkpoint_in: str, checkpoint_out: str | Path, loss_out: str | Path, *, corpus_texts: dict[str, str],
          query_texts: dict[str, str], groups: list[Group], nway: int, batch_size: int, epochs: int,
          max_steps: int | None, lr: float, warmup: float, weight_decay: float, lambda_kd: float,
          lambda_pair: float, temperature: float, use_labels: bool, in_batch_negatives: bool,
          query_maxlen: int, doc_maxlen: int, seed: int, grad_clip: float = 1.0,
          state_dir: str | Path | None = None, save_every: int = 50) -> dict:
    """Train and save ``checkpoint_out`` plus the loss curve ``loss_out``; returns run statistics.

    With ``use_labels``, a group's ``positive_index`` is its labelled positive's column, or -1 for
    an unlabelled query (no contrastive term for it). With ``state_dir``, a resumable state is
    written there every ``save_every`` optimizer steps and a matching one is resumed from (see
    the module docstring); the directory is removed once both outputs are written.
    """
    from accelerate import Accelerator
    from colbert.modeling.tokenization import DocTokenizer, QueryTokenizer

    if not groups:
        raise ValueError("no training groups: every query was skipped (see the group statistics in the log)")
    if use_labels and any(g.positive_index is None for g in groups):
        raise ValueError("use_labels needs groups built with labels (positive_index set on every group)")
    if state_dir is not None and save_every < 1:
        raise ValueError(f"save_every must be >= 1, got {save_every}")
    hyper = dict(nway=nway, batch_size=batch_size, epochs=epochs, max_steps=max_steps, lr=lr, warmup=warmup,
                 weight_decay=weight_decay, lambda_kd=lambda_kd, lambda_pair=lambda_pair,
                 temperature=temperature, use_labels=use_labels, in_batch_negatives=in_batch_negatives,
                 query_maxlen=query_maxlen, doc_maxlen=doc_maxlen, seed=seed, grad_clip=grad_clip)
    fingerprint = run_fingerprint(checkpoint_in, hyper, groups, query_texts) if state_dir is not None else None

    runtime.seed_everything(seed)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    model = student.load_student(checkpoint_in, query_maxlen=query_maxlen, doc_maxlen=doc_maxlen)
    config = model.colbert_config
    qtok, dtok = QueryTokenizer(config), DocTokenizer(config)
    model.train()

    steps_per_epoch = math.ceil(len(groups) / batch_size)
    total = steps_per_epoch * epochs if not max_steps else min(max_steps, steps_per_epoch * epochs)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr,
                                  weight_decay=weight_decay)
    scheduler = _linear_schedule(optimizer, int(warmup * total), total)
    loss_fn = PairDistillLoss(lambda_kd=lambda_kd, lambda_pair=lambda_pair, temperature=temperature,
                              use_labels=use_labels)
    rng = np.random.default_rng(seed)

    # the data position: epoch, that epoch's permutation and how far into it the loop is
    rows, step, epoch, order, pos, elapsed_before = [], 0, -1, None, 0, 0.0
    resumed = load_state(state_dir, fingerprint) if state_dir is not None else None
    resumed_step = int(resumed["step"]) if resumed is not None else None
    if resumed is not None:
        model.load_state_dict(resumed["model"])  # before prepare: the unwrapped module
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        rows, step, epoch, pos = list(resumed["rows"]), int(resumed["step"]), int(resumed["epoch"]), int(resumed["pos"])
        order = np.asarray(resumed["order"]) if resumed["order"] is not None else None
        elapsed_before = float(resumed["elapsed_s"])
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    if resumed is not None:
        _restore_rng_states(resumed["rng"], rng)  # last: nothing may draw between here and the next batch
        print(f"resuming from step {step} of {total} (epoch {epoch + 1}, {pos} of its {len(order)} groups done) "
              f"from {resumed['path']}", flush=True)
        del resumed

    print(f"training on {len(groups)} groups: {total} steps of {batch_size} queries x {nway} passages",
          flush=True)
    if state_dir is not None:
        print(f"keeping a resumable state in {state_dir} every {save_every} steps", flush=True)
    progress = Progress(total - step, f"train from step {step}" if step else "train", unit="steps")
    start = time.monotonic()
    while step < total:
        if order is None or pos >= len(order):
            order, pos, epoch = rng.permutation(len(groups)), 0, epoch + 1
        batch = [groups[i] for i in order[pos:pos + batch_size]]
        pos += len(batch)
        B = len(batch)
        q_ids, q_mask = qtok.tensorize([query_texts[g.query_id] for g in batch])
        d_ids, d_mask = dtok.tensorize([corpus_texts[d] for g in batch for d in g.doc_ids])
        Q = model.query(q_ids, q_mask)
        D, D_mask = model.doc(d_ids, d_mask, keep_dims="return_mask")
        if in_batch_negatives:
            wide = _maxsim(Q, D, D_mask)  # (B, B*nway): every passage of the batch
            scores = wide.view(B, B, nway)[torch.arange(B), torch.arange(B)]
        else:
            wide = None
            scores = _maxsim_aligned(Q, D, D_mask, nway)
        teacher = torch.tensor([g.teacher_scores for g in batch], dtype=torch.float32, device=scores.device)
        pair_rows = [(r, i, j, p) for r, g in enumerate(batch) for i, j, p in g.pairs]
        pair_index = torch.tensor([p[:3] for p in pair_rows], dtype=torch.long,
                                  device=scores.device).view(-1, 3)
        teacher_prob = torch.tensor([p[3] for p in pair_rows], dtype=torch.float32, device=scores.device)
        positive_index = None
        if use_labels:
            positive_index = torch.tensor([g.positive_index for g in batch], dtype=torch.long,
                                          device=scores.device)
        if use_labels and wide is not None:
            parts = loss_fn(scores, teacher, pair_index, teacher_prob, contrastive_scores=wide,
                            positive_index=in_batch_positive(positive_index, nway))
        else:
            parts = loss_fn(scores, teacher, pair_index, teacher_prob, positive_index=positive_index)
        optimizer.zero_grad()
        accelerator.backward(parts["loss"])
        if grad_clip:
            accelerator.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        scheduler.step()
        rows.append({"step": step, **{k: float(v.detach()) for k, v in parts.items()},
                     "lr": float(scheduler.get_last_lr()[0]),
                     "elapsed_s": elapsed_before + time.monotonic() - start})
        step += 1
        progress.update(1)
        if step % 10 == 0 or step == total:
            r = rows[-1]
            print(f"step {step}/{total} loss {r['loss']:.4f} cl {r['loss_cl']:.4f} "
                  f"kd {r['loss_kd']:.4f} pair {r['loss_pair']:.4f} lr {r['lr']:.2e}", flush=True)
        if state_dir is not None and step % save_every == 0 and step < total:
            elapsed = elapsed_before + time.monotonic() - start
            payload = {"format": STATE_FORMAT, "step": step, "epoch": epoch, "pos": pos, "order": order,
                       "elapsed_s": elapsed, "rows": rows,
                       "model": accelerator.unwrap_model(model).state_dict(),
                       "optimizer": optimizer.optimizer.state_dict() if hasattr(optimizer, "optimizer")
                       else optimizer.state_dict(),
                       "scheduler": scheduler.scheduler.state_dict() if hasattr(scheduler, "scheduler")
                       else scheduler.state_dict(),
                       "rng": _rng_states(rng)}
            saved = save_state(state_dir, step, payload,
                               {"step": step, "total": total, "epoch": epoch, "pos": pos,
                                "fingerprint": fingerprint})
            print(f"saved training state at step {step}/{total} -> {saved}", flush=True)
    model = accelerator.unwrap_model(model)
    model.eval()
    student.save_student(model, checkpoint_out)
    io.write_table(pd.DataFrame(rows), "loss", loss_out)
    if state_dir is not None:
        remove_state_dir(state_dir)
    return {"steps": step, "groups": len(groups), "first_loss": rows[0]["loss"], "last_loss": rows[-1]["loss"],
            "seconds": time.monotonic() - start, "resumed_from_step": resumed_step}


def _maxsim_aligned(Q: torch.Tensor, D: torch.Tensor, D_mask: torch.Tensor, nway: int) -> torch.Tensor:
    """Each query against its own ``nway`` passages only: (B, Lq, dim), (B*nway, Ld, dim) -> (B, nway)."""
    B = Q.size(0)
    Dv = D.view(B, nway, D.size(1), D.size(2))
    Mv = D_mask.view(B, nway, D.size(1))
    sim = torch.einsum("bid,bpjd->bpij", Q, Dv)
    sim = sim.masked_fill(~Mv[:, :, None, :], -1e4)
    return sim.max(-1).values.sum(-1)
