"""The training loop and what it calls each step: the student kinds' interface (:class:`ColBERTKind`;
a DPR student's is :class:`pairdistill.students.dpr.DPRKind`), in-batch MaxSim in fp32, a step's loss
and gradients (micro-batches through the gradient cache), precision and the LR schedule, and
:func:`train`, which drives them with the exchange (:mod:`.parallel`) and the resumable state
(:mod:`.state`). What the loop does and why: :mod:`pairdistill.train`.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import io, runtime
from ..errors import SettingError
from ..losses import PairDistillLoss
from ..progress import Progress
from ..students import colbert
from .batches import Batch, Group, Groups, Layout, make_batch, next_picks
from .parallel import (_all_reduce_gradients, _gather_batch, _world, broadcast_parameters, gather_objects, launch_rank,
                       share_counts)
from .state import (STATE_FORMAT, _restore_rng_states, _rng_states, find_state, own_share, remove_state_dir,
                    resumed_position, run_fingerprint, save_state)


def _linear_schedule(optimizer, warmup_steps: int, total_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _fp32(x: torch.Tensor) -> torch.Tensor:
    """Half precision (fp16, bf16) promoted to fp32; fp32 and fp64 as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _token_mask(D_mask: torch.Tensor) -> torch.Tensor:
    """(nd, Ld) bool from colbert-ai's (nd, Ld, 1) mask (or an (nd, Ld) one)."""
    return D_mask.reshape(D_mask.shape[0], D_mask.shape[1]).bool()


MAXSIM_CHUNK_BYTES = 1 << 28  # token similarities held at once by the in-batch MaxSim


def _maxsim(Q: torch.Tensor, D: torch.Tensor, D_mask: torch.Tensor) -> torch.Tensor:
    """ColBERT scores of every query against every passage: (nq, Lq, dim) x (nd, Ld, dim) -> (nq, nd).

    In fp32 whatever the dtypes of ``Q`` and ``D`` (colbert-ai's ``doc()`` returns fp16 when CUDA
    is visible; autocast hands over bf16 or fp16) and outside autocast: 32 token maxima summed in
    half precision lose the small score differences the losses work on. Queries are taken a few
    at a time, so the (queries, passages, Lq, Ld) similarities never exceed
    :data:`MAXSIM_CHUNK_BYTES` (the paper's batch: 1.5 GB at once otherwise); the backward pass
    keeps only each maximum's index."""
    Q, D = _fp32(Q), _fp32(D)
    per_query = D.shape[0] * Q.shape[1] * D.shape[1] * 4
    rows = max(1, MAXSIM_CHUNK_BYTES // max(per_query, 1))
    pad = ~_token_mask(D_mask)[None, :, None, :]
    out = []
    with torch.autocast(device_type=Q.device.type, enabled=False):
        for lo in range(0, Q.shape[0], rows):
            sim = torch.einsum("qid,pjd->qpij", Q[lo:lo + rows], D)
            sim = sim.masked_fill(pad, -1e4)
            out.append(sim.max(-1).values.sum(-1))
    return out[0] if len(out) == 1 else torch.cat(out)


def _maxsim_aligned(Q: torch.Tensor, D: torch.Tensor, D_mask: torch.Tensor, nway: int) -> torch.Tensor:
    """Each query against its own ``nway`` passages only: (B, Lq, dim), (B*nway, Ld, dim) -> (B, nway),
    in fp32 as :func:`_maxsim`."""
    B = Q.size(0)
    with torch.autocast(device_type=Q.device.type, enabled=False):
        Dv = _fp32(D).view(B, nway, D.size(1), D.size(2))
        Mv = _token_mask(D_mask).view(B, nway, D.size(1))
        sim = torch.einsum("bid,bpjd->bpij", _fp32(Q), Dv)
        sim = sim.masked_fill(~Mv[:, :, None, :], -1e4)
        return sim.max(-1).values.sum(-1)


class ColBERTKind:
    """The loop's interface to a student kind, here colbert-ai's ColBERT (a DPR student has its
    own: :class:`pairdistill.students.dpr.DPRKind`): load a checkpoint, its tokenizers
    (``tensorize(texts) -> (ids, mask)``), the encoders (queries -> Q; passages -> D and their mask),
    the scores of every query against every passage and against its own ``nway`` only, the
    encoder's gradient checkpointing, and saving. The loop (groups, batches, losses, micro-batches,
    processes, resumable states) is the same for every kind."""

    arch = "colbert"

    def load(self, checkpoint, *, query_maxlen: int, doc_maxlen: int):
        model = colbert.load_student(checkpoint, query_maxlen=query_maxlen, doc_maxlen=doc_maxlen)
        model.use_gpu = False  # colbert-ai halves D on a GPU (for indexing); train.precision decides here
        return model

    def tokenizers(self, model):
        from colbert.modeling.tokenization import DocTokenizer, QueryTokenizer

        return QueryTokenizer(model.colbert_config), DocTokenizer(model.colbert_config)

    def encode(self, model, q_ids, q_mask, d_ids, d_mask):
        Q = model.query(q_ids, q_mask)
        D, D_mask = model.doc(d_ids, d_mask, keep_dims="return_mask")
        return Q, D, D_mask

    def score_all(self, Q, D, D_mask):
        return _maxsim(Q, D, D_mask)

    def score_aligned(self, Q, D, D_mask, nway: int):
        return _maxsim_aligned(Q, D, D_mask, nway)

    def gradient_checkpointing(self, model) -> None:
        model.bert.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def save(self, model, out_dir) -> None:
        colbert.save_student(model, out_dir)


COLBERT = ColBERTKind()


def student_kind(checkpoint: str):
    """The training interface of the student kind ``checkpoint`` is (read from its directory)."""
    from .. import students

    if students.arch_of(runtime.resolve_model(checkpoint)) == "dpr":
        from ..students.dpr import DPRKind

        return DPRKind(checkpoint)
    return COLBERT


# --- one step's loss and gradients: micro-batches, processes ------------------------------------

CONTRASTIVE_NEGATIVES = ("teacher", "in_batch", "mined")


def step_loss(Q: torch.Tensor, D: torch.Tensor, D_mask: torch.Tensor, layout: Layout, batch: Batch,
              loss_fn: PairDistillLoss, *, contrastive_negatives: str = "teacher",
              in_batch_negatives: bool = False, use_labels: bool = True, kind=COLBERT) -> dict[str, torch.Tensor]:
    """The whole batch's loss (fp32) from its embeddings, scored by the student ``kind``; ``batch``
    holds the whole batch's targets."""
    B, nway = Q.shape[0], batch.nway
    pos = batch.positive_index
    wide_cl = use_labels and (contrastive_negatives != "teacher" or in_batch_negatives)
    if not wide_cl:  # teacher negatives, own group only: no extras, so D is the groups, query-major
        scores = kind.score_aligned(Q, D, D_mask, nway)
        return loss_fn(scores, batch.teacher, batch.pair_index, batch.teacher_prob,
                       positive_index=pos if use_labels else None)
    wide = kind.score_all(Q, D, D_mask)  # (B, N): every passage of the batch
    scores = wide.gather(1, layout.group_cols)
    rows = torch.arange(B, device=wide.device)[:, None]
    own = layout.owner[None, :] == rows
    in_group = (layout.group_pos >= 0)[None, :]
    is_positive = own & in_group & (layout.group_pos[None, :] == pos[:, None])
    others = ~own if in_batch_negatives else torch.zeros_like(own)
    if contrastive_negatives == "teacher":
        mask = (own & in_group) | others
    elif contrastive_negatives == "in_batch":
        mask = is_positive | (~own & in_group)
    elif contrastive_negatives == "mined":
        mask = is_positive | (own & ~in_group) | others
    else:
        raise ValueError(f"contrastive_negatives must be one of {CONTRASTIVE_NEGATIVES}, got {contrastive_negatives!r}")
    positive_col = torch.where(pos >= 0, layout.group_cols.gather(1, pos.clamp(min=0)[:, None])[:, 0],
                               torch.full_like(pos, -1))
    return loss_fn(scores, batch.teacher, batch.pair_index, batch.teacher_prob, positive_index=positive_col,
                   contrastive_scores=wide, contrastive_mask=None if bool(mask.all()) else mask)


def _rng_now() -> tuple:
    return (torch.get_rng_state(), torch.cuda.get_rng_state() if torch.cuda.is_available() else None)


def _rng_set(state: tuple) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1])


def _encode(model, batch: Batch, lo: int, hi: int, rows: torch.Tensor, autocast, kind=COLBERT):
    with autocast():
        return kind.encode(model, batch.q_ids[lo:hi], batch.q_mask[lo:hi], batch.d_ids[rows], batch.d_mask[rows])


def batch_gradients(model, batch: Batch, loss_fn: PairDistillLoss, *, contrastive_negatives: str = "teacher",
                    in_batch_negatives: bool = False, use_labels: bool = True, micro_batch: int | None = None,
                    autocast=contextlib.nullcontext, backward=None, kind=COLBERT) -> dict[str, torch.Tensor]:
    """Add the gradient of the whole batch's loss to the parameters' ``.grad``; return the loss parts.

    ``batch`` is this process's share (with several processes every other share is gathered and
    the summed gradients are the whole batch's). ``micro_batch`` < its size switches to the
    gradient cache: embed every micro-batch without a graph, take the loss's gradient with respect
    to the embeddings, then re-encode each micro-batch (same RNG state, so the same dropout masks)
    and back-propagate its slice. ``autocast`` is the encoders' mixed-precision context and
    ``backward`` the call that back-propagates a loss (accelerate's, with loss scaling for fp16);
    ``kind`` the student kind (:class:`ColBERTKind`) that encodes and scores.
    """
    backward = backward or (lambda t: t.backward())
    world, _ = _world()
    b = batch.size
    everything = torch.arange(batch.d_ids.shape[0])
    kw = dict(contrastive_negatives=contrastive_negatives, in_batch_negatives=in_batch_negatives,
              use_labels=use_labels, kind=kind)
    if micro_batch is None or micro_batch >= b:
        Q, D, D_mask = _encode(model, batch, 0, b, everything, autocast, kind)
        Qw, Dw, Mw, layout, whole = _gather_batch(Q, D, D_mask, batch)
        parts = step_loss(Qw, Dw, Mw, layout, whole, loss_fn, **kw)
        backward(parts["loss"])
    else:
        chunks = [(lo, min(lo + micro_batch, b)) for lo in range(0, b, micro_batch)]
        states, Q, D, D_mask = [], None, None, None
        with torch.no_grad():  # pass 1: every embedding, no graph
            for lo, hi in chunks:
                rows = batch.passage_rows(lo, hi)
                states.append(_rng_now())
                q, d, m = _encode(model, batch, lo, hi, rows, autocast, kind)
                if Q is None:  # kept in fp32 (or wider) whatever autocast hands over
                    Q = q.new_zeros((b, *q.shape[1:]), dtype=torch.promote_types(q.dtype, torch.float32))
                    D = d.new_zeros((batch.d_ids.shape[0], *d.shape[1:]), dtype=torch.promote_types(d.dtype, torch.float32))
                    D_mask = m.new_zeros((batch.d_ids.shape[0], *m.shape[1:]))
                Q[lo:hi], D[rows.to(D.device)], D_mask[rows.to(D.device)] = q.to(Q.dtype), d.to(D.dtype), m
        after = _rng_now()
        Q.requires_grad_(True)
        D.requires_grad_(True)
        Qw, Dw, Mw, layout, whole = _gather_batch(Q, D, D_mask, batch)
        parts = step_loss(Qw, Dw, Mw, layout, whole, loss_fn, **kw)
        gQ, gD = torch.autograd.grad(parts["loss"], [Q, D])
        for (lo, hi), state in zip(chunks, states):  # pass 2: each micro-batch with its graph
            rows = batch.passage_rows(lo, hi)
            _rng_set(state)
            q, d, _ = _encode(model, batch, lo, hi, rows, autocast, kind)
            backward((q.to(gQ.dtype) * gQ[lo:hi]).sum() + (d.to(gD.dtype) * gD[rows.to(gD.device)]).sum())
        _rng_set(after)
    if world > 1:
        _all_reduce_gradients([p for p in model.parameters() if p.requires_grad])
    return {k: v.detach() for k, v in parts.items()}


# --- precision, and the loop ------------------------------------------------------------------------

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_MIXED = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}


def resolve_precision(precision: str, device: torch.device, key: str = "train.precision") -> str:
    """``precision`` (the setting ``key``) on this job's device: ``auto`` is bf16 on a GPU that has
    it, else fp32; a precision the device lacks is a :class:`SettingError` naming the key."""
    if precision not in PRECISIONS:
        raise SettingError(f"{key}: {precision!r} is not one of {', '.join(PRECISIONS)}")
    cuda = device.type == "cuda"
    bf16 = cuda and torch.cuda.is_bf16_supported()
    if precision == "auto":
        return "bf16" if bf16 else "fp32"
    if precision == "fp16" and not cuda:
        raise SettingError(f"{key}: fp16 needs a GPU and this job has none (use fp32 or bf16)")
    if precision == "bf16" and cuda and not bf16:
        raise SettingError(f"{key}: bf16 is not supported by {torch.cuda.get_device_name(device)} "
                           "(use fp16 or fp32)")
    return precision


def _check_settings(groups: list[Group] | Groups, world: int, *, batch_size: int, use_labels: bool, state_dir,
                    save_every: int, micro_batch: int | None, contrastive_negatives: str) -> None:
    """The arguments' errors, before anything is loaded (a :class:`SettingError` names its config key)."""
    unlabelled = (groups.positive_index is None if isinstance(groups, Groups)
                  else any(g.positive_index is None for g in groups))
    if use_labels and unlabelled:
        raise ValueError("use_labels needs groups built with labels (positive_index set on every group)")
    if state_dir is not None and save_every < 1:
        raise ValueError(f"save_every must be >= 1, got {save_every}")
    if micro_batch is not None and micro_batch < 1:
        raise SettingError(f"train.micro_batch: must be >= 1, got {micro_batch}")
    if contrastive_negatives not in CONTRASTIVE_NEGATIVES:
        raise SettingError(f"train.contrastive_negatives: {contrastive_negatives!r} is not one of "
                           f"{', '.join(CONTRASTIVE_NEGATIVES)}")
    if batch_size % world:
        raise SettingError(f"train.batch_size: {batch_size} queries do not split evenly over {world} processes")
    if world == 1 and not groups:
        raise ValueError("no training groups: every query was skipped (see the group statistics in the log)")


def _accelerator(precision: str, world: int):
    """(accelerate's ``Accelerator`` on this process's device, ``precision`` resolved on that device)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    cuda = torch.cuda.is_available()
    dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if cuda and world > 1 else runtime.device()
    precision = resolve_precision(precision, dev)
    # accelerate keeps one mixed-precision setting per process; a job trains once, but a process
    # that trains again (tests, a notebook) may ask for another. The process group is kept.
    AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(cpu=not cuda, mixed_precision=_MIXED[precision]), precision


def _state_hyperparameters(hyper: dict, precision: str, contrastive_negatives: str, world: int) -> dict:
    """``hyper`` and the settings added since: what a resumable state must have been written with."""
    # added only where they differ from what the loop did before they existed: earlier states stay valid
    if precision != "fp32":
        hyper["precision"] = precision
    if contrastive_negatives != "teacher":
        hyper["contrastive_negatives"] = contrastive_negatives
    if world > 1:
        hyper["processes"] = world
    return hyper


def _save_training_state(state_dir, step: int, total: int, data: dict, rng: np.random.Generator, rows: list[dict],
                         fingerprint: dict | None, model, optimizer, scheduler, accelerator, elapsed_s) -> None:
    """Step ``step``'s resumable state: every process's data position and RNG states, gathered, and
    the main process's model, AdamW, LR schedule and loss scaler, written by the main process.
    ``elapsed_s()`` is the run's training time so far."""
    world, main = accelerator.num_processes, accelerator.is_main_process
    mine = {"epoch": data["epoch"], "pos": data["pos"], "order": data["order"], "rng": _rng_states(rng)}
    ranks = gather_objects(mine, world) if world > 1 else None
    if main:
        elapsed = elapsed_s()
        payload = {"format": STATE_FORMAT, "step": step, **mine, "elapsed_s": elapsed, "rows": rows,
                   "model": model.state_dict(), "optimizer": optimizer.optimizer.state_dict(),
                   "scheduler": scheduler.state_dict(),
                   "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None}
        if ranks is not None:
            payload["ranks"] = ranks
        saved = save_state(state_dir, step, payload,
                           {"step": step, "total": total, "epoch": data["epoch"], "pos": data["pos"],
                            "fingerprint": fingerprint})
        print(f"saved training state at step {step}/{total} -> {saved}", flush=True)
    if world > 1:
        accelerator.wait_for_everyone()


def train(checkpoint_in: str, checkpoint_out: str | Path, loss_out: str | Path, *, corpus_texts: dict[str, str],
          query_texts: dict[str, str], groups: list[Group] | Groups, nway: int, batch_size: int, epochs: int,
          max_steps: int | None, lr: float, warmup: float, weight_decay: float, lambda_kd: float,
          lambda_pair: float, temperature: float, use_labels: bool, in_batch_negatives: bool,
          query_maxlen: int, doc_maxlen: int, seed: int, grad_clip: float = 1.0,
          state_dir: str | Path | None = None, save_every: int = 50, micro_batch: int | None = None,
          precision: str = "auto", grad_checkpointing: bool = False,
          contrastive_negatives: str = "teacher", arch: str | None = None) -> dict:
    """Train and save ``checkpoint_out`` plus the loss curve ``loss_out``; returns run statistics.

    With ``use_labels``, a group's ``positive_index`` is its labelled positive's column, or -1 for
    an unlabelled query (no contrastive term for it). With ``state_dir``, a resumable state is
    written there every ``save_every`` optimizer steps and a matching one is resumed from (see
    :mod:`pairdistill.train`); the directory is removed once both outputs are written.

    Launched as several processes (``WORLD_SIZE`` > 1), ``groups`` is this process's share and
    each takes ``batch_size / processes`` queries per step (see :mod:`pairdistill.train`).
    ``micro_batch`` (queries per forward/backward in a process) and ``grad_checkpointing`` change
    memory and time, not the gradients, so a state saved with other values is resumed.

    The student kind (ColBERT or DPR) is the checkpoint's own; ``arch``, when given, is the one
    it must be (config ``student.arch``).
    """
    world, rank = launch_rank()
    _check_settings(groups, world, batch_size=batch_size, use_labels=use_labels, state_dir=state_dir,
                    save_every=save_every, micro_batch=micro_batch, contrastive_negatives=contrastive_negatives)
    kind = student_kind(checkpoint_in)
    if arch is not None and kind.arch != arch:
        raise SettingError(f"student.arch: {arch}, but the checkpoint {checkpoint_in} is a {kind.arch} student")

    accelerator, precision = _accelerator(precision, world)
    world, rank = accelerator.num_processes, accelerator.process_index
    main = accelerator.is_main_process
    local_b = batch_size // world
    n_total, digest = share_counts(groups, query_texts, world, with_digest=state_dir is not None)
    hyper = _state_hyperparameters(
        dict(nway=nway, batch_size=batch_size, epochs=epochs, max_steps=max_steps, lr=lr, warmup=warmup,
             weight_decay=weight_decay, lambda_kd=lambda_kd, lambda_pair=lambda_pair,
             temperature=temperature, use_labels=use_labels, in_batch_negatives=in_batch_negatives,
             query_maxlen=query_maxlen, doc_maxlen=doc_maxlen, seed=seed, grad_clip=grad_clip),
        precision, contrastive_negatives, world)
    fingerprint = None
    if state_dir is not None and main:
        fingerprint = run_fingerprint(checkpoint_in, hyper, groups, query_texts, digest=digest, n_groups=n_total)

    runtime.seed_everything(seed + rank)  # each process its own dropout masks
    model = kind.load(checkpoint_in, query_maxlen=query_maxlen, doc_maxlen=doc_maxlen)
    if grad_checkpointing:
        kind.gradient_checkpointing(model)
    qtok, dtok = kind.tokenizers(model)
    model.train()

    steps_per_epoch = math.ceil(n_total / batch_size)
    total = steps_per_epoch * epochs if not max_steps else min(max_steps, steps_per_epoch * epochs)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    scheduler = _linear_schedule(optimizer, int(warmup * total), total)
    loss_fn = PairDistillLoss(lambda_kd=lambda_kd, lambda_pair=lambda_pair, temperature=temperature,
                              use_labels=use_labels)
    rng = np.random.default_rng(seed if world == 1 else [seed, rank])

    # the data position: epoch, that epoch's permutation and how far into it the loop is
    rows, step, elapsed_before = [], 0, 0.0
    data = {"epoch": -1, "order": None, "pos": 0}
    resumed = find_state(state_dir, fingerprint, main, world) if state_dir is not None else None
    resumed_step = int(resumed["step"]) if resumed is not None else None
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        rows, step, elapsed_before, data = resumed_position(resumed, rank, world)
    model.to(accelerator.device)
    if world > 1 and resumed is None:  # one starting point for every replica
        broadcast_parameters(model)
    # the model is not wrapped (no DDP): processes exchange embeddings and summed gradients themselves
    optimizer = accelerator.prepare(optimizer)
    if resumed is not None:
        if resumed.get("scaler") is not None and accelerator.scaler is not None:
            accelerator.scaler.load_state_dict(resumed["scaler"])
        _restore_rng_states(own_share(resumed, rank, world)["rng"], rng)  # last: nothing may draw before the next batch
        print(f"resuming from step {step} of {total} (epoch {data['epoch'] + 1}, {data['pos']} of its "
              f"{len(data['order'])} groups done) from {resumed['path']}", flush=True)
        del resumed

    if main:
        print(f"training on {n_total} groups: {total} steps of {batch_size} queries x {nway} passages"
              f"{f' ({world} processes of {local_b})' if world > 1 else ''}, precision {precision}"
              f"{f', micro-batches of {micro_batch}' if micro_batch and micro_batch < local_b else ''}"
              f"{f', contrastive negatives: {contrastive_negatives}' if use_labels else ', no labels (L_ZS)'}"
              f"{f', a {kind.arch} student' if kind is not COLBERT else ''}", flush=True)
        if state_dir is not None:
            print(f"keeping a resumable state in {state_dir} every {save_every} steps", flush=True)
    progress = Progress(total - step, f"train from step {step}" if step else "train", unit="steps")
    start = time.monotonic()
    while step < total:
        picked = next_picks(len(groups), local_b, rng, data, world)
        batch = make_batch([groups[i] for i in picked], qtok, dtok, query_texts, corpus_texts, nway, use_labels,
                           accelerator.device)
        optimizer.zero_grad()
        parts = batch_gradients(model, batch, loss_fn, contrastive_negatives=contrastive_negatives,
                                in_batch_negatives=in_batch_negatives, use_labels=use_labels,
                                micro_batch=micro_batch, autocast=accelerator.autocast,
                                backward=accelerator.backward, kind=kind)
        if grad_clip:
            accelerator.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        if not optimizer.step_was_skipped:  # fp16: a step skipped for overflow leaves the schedule too
            scheduler.step()
        rows.append({"step": step, **{k: float(v) for k, v in parts.items()},
                     "lr": float(scheduler.get_last_lr()[0]),
                     "elapsed_s": elapsed_before + time.monotonic() - start})
        step += 1
        progress.update(1)
        if main and (step % 10 == 0 or step == total):
            r = rows[-1]
            print(f"step {step}/{total} loss {r['loss']:.4f} cl {r['loss_cl']:.4f} "
                  f"kd {r['loss_kd']:.4f} pair {r['loss_pair']:.4f} lr {r['lr']:.2e}", flush=True)
        if state_dir is not None and step % save_every == 0 and step < total:
            _save_training_state(state_dir, step, total, data, rng, rows, fingerprint, model, optimizer, scheduler,
                                 accelerator, lambda: elapsed_before + time.monotonic() - start)
    model.eval()
    if main:
        kind.save(model, checkpoint_out)
        io.write_table(pd.DataFrame(rows), "loss", loss_out)
        if state_dir is not None:
            remove_state_dir(state_dir)
    if world > 1:
        accelerator.wait_for_everyone()
    return {"steps": step, "groups": n_total, "first_loss": rows[0]["loss"], "last_loss": rows[-1]["loss"],
            "seconds": time.monotonic() - start, "resumed_from_step": resumed_step, "precision": precision,
            "processes": world}
