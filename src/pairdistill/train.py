"""Fine-tune ColBERT checkpoint n into n+1 with PairDistill's loss, in our own loop.

colbert-ai's trainer always wraps DDP and has no place for a pairwise term, so this loop drives
its ``ColBERT`` model class directly (query/doc encoders, MaxSim scoring) and saves a checkpoint
that stock colbert-ai indexes and searches.

The loop reaches the student only through its kind's interface (:class:`ColBERTKind`: load,
tokenize, encode, score, save), so a DPR student (:class:`pairdistill.students.dpr.DPRKind`, one
vector per text, score = scaled inner product) trains in the same loop with the same losses; the
kind is read from the input checkpoint.

One training group per query: ``nway`` passages from the pointwise-reranked list (the labelled
positive first when labels are used; then the passages of the sampled pairs; then the best
teacher-ranked rest), the pointwise teacher's scores for them, and the sampled pairs whose two
passages are both in the group with the pairwise teacher's P(d_i > d_j).

Queries without a labelled positive are skipped when labels are used, unless
``unlabelled_queries`` keeps them (``positive_index = -1``: they get the KD and pairwise terms
but no contrastive term), as with MS MARCO's ~800K distillation queries of which ~500K are labelled.

The contrastive term L_CL (``contrastive_negatives``) puts a labelled query's positive against
``teacher``: its own teacher-ranked non-positives (the rest of its group); ``in_batch``: the
passages of the batch's other queries only; ``mined``: its own mined negatives (a file, e.g. the
DRAGON negatives the authors used), encoded beside the group. ``in_batch_negatives`` adds the
other queries' passages to ``teacher`` and ``mined``.

Precision: the encoders run under accelerate's mixed precision (``fp32``, ``bf16``, ``fp16`` with
loss scaling; ``auto`` is bf16 on a GPU that has it, else fp32); MaxSim sums and every loss are
computed in fp32 whatever dtype the encoders hand over.

Micro-batches (gradient cache): with ``micro_batch`` < the batch, a step first embeds the whole
batch in micro-batches without graphs, computes the loss and its gradient with respect to the
embeddings, then encodes each micro-batch again with the graph and back-propagates its slice of
those gradients. The parameter gradients are the full batch's (in-batch negatives included), at
the memory of one micro-batch and the cost of a second forward pass. Each micro-batch's second
pass replays the RNG state of its first, so dropout draws the same masks in both.

Several processes (one per GPU, launched by the job): each takes ``batch_size / world`` queries
of every step from its own share of the queries (a hash of the query id, so no two processes read
the same rows), embeds them, gathers every process's embeddings (its own keep their graph), and
computes the whole batch's loss; the parameter gradients are summed across processes, so a step
equals one process's step on the same batch.

Preemption: with a ``state_dir`` the loop writes a resumable state every ``save_every`` optimizer
steps (model, AdamW, LR scheduler, loss scaler, every RNG and data position of every process, the
loss rows so far), each atomically, and a rerun with the same inputs and hyperparameters continues
from it bit-exactly (on CPU); the state directory is removed once the checkpoint and loss curve are
written.
"""

from __future__ import annotations

import contextlib
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

from . import io, runtime
from .students import colbert
from .errors import SettingError
from .losses import PairDistillLoss
from .progress import Progress


@dataclass
class Group:
    query_id: str
    doc_ids: list[str]
    teacher_scores: list[float]
    positive_index: int | None  # None without labels; -1 for a kept unlabelled query
    pairs: list[tuple[int, int, float]] = field(default_factory=list)  # (i, j, P(d_i > d_j))
    negatives: list[str] = field(default_factory=list)  # mined negatives (contrastive_negatives: mined)


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
    from . import students

    if students.arch_of(runtime.resolve_model(checkpoint)) == "dpr":
        from .students.dpr import DPRKind

        return DPRKind(checkpoint)
    return COLBERT


# --- one step's gradients: batches, micro-batches, processes --------------------------------------

CONTRASTIVE_NEGATIVES = ("teacher", "in_batch", "mined")


@dataclass
class Batch:
    """One process's share of a step, tokenized: ``b`` queries, their ``b * nway`` group passages
    (query-major), then their extra (mined) negatives, ``extra_owner[k]`` the query of extra k."""
    q_ids: torch.Tensor
    q_mask: torch.Tensor
    d_ids: torch.Tensor
    d_mask: torch.Tensor
    teacher: torch.Tensor                  # (b, nway) pointwise teacher scores
    pair_index: torch.Tensor               # (P, 3) long: (row, i, j)
    teacher_prob: torch.Tensor             # (P,)
    positive_index: torch.Tensor | None    # (b,) long, -1 unlabelled; None without labels
    extra_owner: torch.Tensor              # (E,) long
    nway: int

    @property
    def size(self) -> int:
        return int(self.q_ids.shape[0])

    def passage_rows(self, lo: int, hi: int) -> torch.Tensor:
        """Rows of ``d_ids`` that belong to queries ``lo .. hi-1``: their groups, then their extras."""
        group = torch.arange(lo * self.nway, hi * self.nway)
        owner = self.extra_owner.cpu()
        extra = self.size * self.nway + torch.nonzero((owner >= lo) & (owner < hi)).flatten()
        return torch.cat([group, extra])


def make_batch(groups: list[Group], qtok, dtok, query_texts: dict[str, str], corpus_texts: dict[str, str],
               nway: int, use_labels: bool, device: torch.device | str = "cpu") -> Batch:
    q_ids, q_mask = qtok.tensorize([query_texts[g.query_id] for g in groups])
    texts = [corpus_texts[d] for g in groups for d in g.doc_ids] + [corpus_texts[d] for g in groups for d in g.negatives]
    d_ids, d_mask = dtok.tensorize(texts)
    pair_rows = [(r, i, j, p) for r, g in enumerate(groups) for i, j, p in g.pairs]
    return Batch(
        q_ids=q_ids, q_mask=q_mask, d_ids=d_ids, d_mask=d_mask,
        teacher=torch.tensor([g.teacher_scores for g in groups], dtype=torch.float32, device=device),
        pair_index=torch.tensor([p[:3] for p in pair_rows], dtype=torch.long, device=device).view(-1, 3),
        teacher_prob=torch.tensor([p[3] for p in pair_rows], dtype=torch.float32, device=device),
        positive_index=(torch.tensor([g.positive_index for g in groups], dtype=torch.long, device=device)
                        if use_labels else None),
        extra_owner=torch.tensor([r for r, g in enumerate(groups) for _ in g.negatives], dtype=torch.long,
                                 device=device),
        nway=nway)


@dataclass
class Layout:
    """Where the passages of the whole (gathered) batch sit: column ``c`` of the wide score matrix
    belongs to query ``owner[c]`` and is its group passage ``group_pos[c]`` (-1: an extra negative);
    ``group_cols[b, k]`` is the column of query b's group passage k."""
    group_cols: torch.Tensor
    owner: torch.Tensor
    group_pos: torch.Tensor


def _layout(shares: list[tuple[int, torch.Tensor]], nway: int, device) -> Layout:
    """From each process's (queries, extra_owner), in process order (one entry: a single process)."""
    cols, owner, pos = [], [], []
    row = col = 0
    for b, extra_owner in shares:
        local = torch.arange(b, device=device)
        cols.append(col + local[:, None] * nway + torch.arange(nway, device=device)[None, :])
        owner += [row + local.repeat_interleave(nway), row + extra_owner.to(device)]
        pos += [torch.arange(nway, device=device).repeat(b), torch.full((len(extra_owner),), -1, device=device)]
        row, col = row + b, col + b * nway + len(extra_owner)
    return Layout(torch.cat(cols).long(), torch.cat(owner).long(), torch.cat(pos).long())


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


def _world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def launch_rank() -> tuple[int, int]:
    """(processes, this one's rank) of a data-parallel job, from the launcher's environment."""
    return int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))


def _gather_rows(x: torch.Tensor, counts: list[int]) -> list[torch.Tensor]:
    """Every process's ``x`` (first dimensions differ: ``counts``; the others agree); this process'
    own entry is ``x`` itself, graph included."""
    import torch.distributed as dist

    world, rank = _world()
    n = max(counts)
    send = x.detach()
    if send.dtype == torch.bool:
        send = send.to(torch.uint8)
    if send.shape[0] < n:
        send = torch.cat([send, send.new_zeros((n - send.shape[0], *send.shape[1:]))])
    out = [torch.empty_like(send) for _ in range(world)]
    dist.all_gather(out, send.contiguous())
    got = [t[:c].to(x.dtype) for t, c in zip(out, counts)]
    got[rank] = x
    return got


def _gather_batch(Q: torch.Tensor, D: torch.Tensor, D_mask: torch.Tensor, batch: Batch):
    """(Q, D, D_mask, layout, targets) of the whole batch: one process's own, or every process's
    gathered (passages padded to the longest; this process's embeddings keep their graph)."""
    world, rank = _world()
    if world == 1:
        return Q, D, D_mask, _layout([(batch.size, batch.extra_owner)], batch.nway, Q.device), batch
    import torch.distributed as dist
    import torch.nn.functional as F

    # passage "tokens": a ColBERT passage's token rows (its mask (n, Ld, 1)), a DPR passage's one vector (n, 1)
    D_mask = D_mask.reshape(D_mask.shape[0], -1)
    mine = {"b": batch.size, "n": int(D.shape[0]), "Ld": int(D_mask.shape[1]), "teacher": batch.teacher.cpu(),
            "pair_index": batch.pair_index.cpu(), "teacher_prob": batch.teacher_prob.cpu(),
            "positive_index": None if batch.positive_index is None else batch.positive_index.cpu(),
            "extra_owner": batch.extra_owner.cpu()}
    shares = [None] * world
    dist.all_gather_object(shares, mine)
    Ld = max(s["Ld"] for s in shares)
    if D.dim() == 3:  # token matrices: padded to the longest passage of any process
        D = F.pad(D, (0, 0, 0, Ld - D.shape[1]))
    D_mask = torch.cat([D_mask, D_mask.new_zeros((D_mask.shape[0], Ld - D_mask.shape[1]))], dim=1)
    Qs = _gather_rows(Q, [s["b"] for s in shares])
    Ds = _gather_rows(D, [s["n"] for s in shares])
    Ms = _gather_rows(D_mask, [s["n"] for s in shares])
    dev = Q.device
    offsets = np.cumsum([0] + [s["b"] for s in shares])[:-1]
    whole = Batch(q_ids=batch.q_ids, q_mask=batch.q_mask, d_ids=batch.d_ids, d_mask=batch.d_mask,
                  teacher=torch.cat([s["teacher"] for s in shares]).to(dev),
                  pair_index=torch.cat([s["pair_index"] + torch.tensor([int(o), 0, 0]) for s, o in zip(shares, offsets)]).to(dev),
                  teacher_prob=torch.cat([s["teacher_prob"] for s in shares]).to(dev),
                  positive_index=None if batch.positive_index is None
                  else torch.cat([s["positive_index"] for s in shares]).to(dev),
                  extra_owner=batch.extra_owner, nway=batch.nway)
    layout = _layout([(s["b"], s["extra_owner"]) for s in shares], batch.nway, dev)
    return torch.cat(Qs), torch.cat(Ds), torch.cat(Ms), layout, whole


def _all_reduce_gradients(params: list[torch.nn.Parameter]) -> None:
    """Sum every process's parameter gradients (each holds the whole loss's gradient through its
    own embeddings), in one flat buffer per dtype."""
    import torch.distributed as dist
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    # every process runs the same graph, so the same parameters have gradients (the pooler none):
    # leaving None as None keeps AdamW from moving them, as in one process
    grads = [p.grad for p in params if p.grad is not None]
    for dtype in sorted({g.dtype for g in grads}, key=str):
        same = [g for g in grads if g.dtype == dtype]
        flat = _flatten_dense_tensors(same)
        dist.all_reduce(flat)
        for g, summed in zip(same, _unflatten_dense_tensors(flat, same)):
            g.copy_(summed)


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
    if any(g.negatives for g in groups):
        h.update("\x1e".join("\x1f".join(g.negatives) for g in groups).encode())
    return h.hexdigest()


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


def _next_local(groups_n: int, want: int, rng: np.random.Generator, pos_state: dict) -> list[int]:
    """``want`` group indices from this process's share, starting a new permutation of it (a new
    local epoch) whenever one runs out, so every process takes the same number each step."""
    out: list[int] = []
    while len(out) < want:
        if pos_state["order"] is None or pos_state["pos"] >= len(pos_state["order"]):
            pos_state["order"], pos_state["pos"], pos_state["epoch"] = rng.permutation(groups_n), 0, pos_state["epoch"] + 1
        take = pos_state["order"][pos_state["pos"]:pos_state["pos"] + want - len(out)]
        pos_state["pos"] += len(take)
        out.extend(int(i) for i in take)
    return out


def train(checkpoint_in: str, checkpoint_out: str | Path, loss_out: str | Path, *, corpus_texts: dict[str, str],
          query_texts: dict[str, str], groups: list[Group], nway: int, batch_size: int, epochs: int,
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
    the module docstring); the directory is removed once both outputs are written.

    Launched as several processes (``WORLD_SIZE`` > 1), ``groups`` is this process's share and
    each takes ``batch_size / processes`` queries per step (see the module docstring).
    ``micro_batch`` (queries per forward/backward in a process) and ``grad_checkpointing`` change
    memory and time, not the gradients, so a state saved with other values is resumed.

    The student kind (ColBERT or DPR) is the checkpoint's own; ``arch``, when given, is the one
    it must be (config ``student.arch``).
    """
    from accelerate import Accelerator

    world, rank = launch_rank()
    if use_labels and any(g.positive_index is None for g in groups):
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
    kind = student_kind(checkpoint_in)
    if arch is not None and kind.arch != arch:
        raise SettingError(f"student.arch: {arch}, but the checkpoint {checkpoint_in} is a {kind.arch} student")

    cuda = torch.cuda.is_available()
    dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if cuda and world > 1 else runtime.device()
    precision = resolve_precision(precision, dev)
    from accelerate.state import AcceleratorState

    # accelerate keeps one mixed-precision setting per process; a job trains once, but a process
    # that trains again (tests, a notebook) may ask for another. The process group is kept.
    AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = Accelerator(cpu=not cuda, mixed_precision=_MIXED[precision])
    world, rank = accelerator.num_processes, accelerator.process_index
    main = accelerator.is_main_process
    local_b = batch_size // world
    n_total = len(groups)
    if world > 1:
        import torch.distributed as dist

        counts = [None] * world
        dist.all_gather_object(counts, (len(groups), groups_digest(groups, query_texts) if state_dir else ""))
        if min(c for c, _ in counts) == 0:
            raise ValueError(f"no training groups in some process's share (groups per process: "
                             f"{[c for c, _ in counts]}): too few queries for {world} processes")
        n_total = sum(c for c, _ in counts)
        digest = hashlib.sha256("".join(d for _, d in counts).encode()).hexdigest()

    hyper = dict(nway=nway, batch_size=batch_size, epochs=epochs, max_steps=max_steps, lr=lr, warmup=warmup,
                 weight_decay=weight_decay, lambda_kd=lambda_kd, lambda_pair=lambda_pair,
                 temperature=temperature, use_labels=use_labels, in_batch_negatives=in_batch_negatives,
                 query_maxlen=query_maxlen, doc_maxlen=doc_maxlen, seed=seed, grad_clip=grad_clip)
    # added only where they differ from what the loop did before they existed: earlier states stay valid
    if precision != "fp32":
        hyper["precision"] = precision
    if contrastive_negatives != "teacher":
        hyper["contrastive_negatives"] = contrastive_negatives
    if world > 1:
        hyper["processes"] = world
    fingerprint = None
    if state_dir is not None and main:
        fingerprint = (run_fingerprint(checkpoint_in, hyper, groups, query_texts) if world == 1 else
                       run_fingerprint(checkpoint_in, hyper, groups, query_texts, digest=digest, n_groups=n_total))

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
    resumed = None
    if state_dir is not None:
        if main:
            resumed = load_state(state_dir, fingerprint)
        if world > 1:  # the others read the state the main process chose (and cleaned up around)
            path = [resumed["path"] if resumed is not None else None]
            dist.broadcast_object_list(path, src=0)
            if not main and path[0] is not None:
                resumed = torch.load(Path(path[0]) / "state.pt", map_location="cpu", weights_only=False)
                resumed["path"] = path[0]
    resumed_step = int(resumed["step"]) if resumed is not None else None
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        mine = resumed["ranks"][rank] if world > 1 else resumed
        rows, step, elapsed_before = list(resumed["rows"]), int(resumed["step"]), float(resumed["elapsed_s"])
        data = {"epoch": int(mine["epoch"]), "pos": int(mine["pos"]),
                "order": np.asarray(mine["order"]) if mine["order"] is not None else None}
    model.to(accelerator.device)
    if world > 1 and resumed is None:  # one starting point for every replica
        for t in model.state_dict().values():
            dist.broadcast(t, src=0)
    # the model is not wrapped (no DDP): processes exchange embeddings and summed gradients themselves
    optimizer = accelerator.prepare(optimizer)
    if resumed is not None:
        if resumed.get("scaler") is not None and accelerator.scaler is not None:
            accelerator.scaler.load_state_dict(resumed["scaler"])
        _restore_rng_states((resumed["ranks"][rank] if world > 1 else resumed)["rng"], rng)  # last: nothing may draw before the next batch
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
        if world == 1:
            if data["order"] is None or data["pos"] >= len(data["order"]):
                data["order"], data["pos"], data["epoch"] = rng.permutation(len(groups)), 0, data["epoch"] + 1
            picked = data["order"][data["pos"]:data["pos"] + batch_size]
            data["pos"] += len(picked)
        else:
            picked = _next_local(len(groups), local_b, rng, data)
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
            mine = {"epoch": data["epoch"], "pos": data["pos"], "order": data["order"], "rng": _rng_states(rng)}
            ranks = None
            if world > 1:
                ranks = [None] * world
                dist.all_gather_object(ranks, mine)
            if main:
                elapsed = elapsed_before + time.monotonic() - start
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
