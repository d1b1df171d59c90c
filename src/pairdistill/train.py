"""Fine-tune ColBERT checkpoint n into n+1 with PairDistill's loss, in our own loop.

colbert-ai's trainer always wraps DDP and has no place for a pairwise term, so this loop drives
its ``ColBERT`` model class directly (query/doc encoders, MaxSim scoring) and saves a checkpoint
that stock colbert-ai indexes and searches.

One training group per query: ``nway`` passages from the pointwise-reranked list (the labelled
positive first when labels are used; then the passages of the sampled pairs; then the best
teacher-ranked rest), the pointwise teacher's scores for them, and the sampled pairs whose two
passages are both in the group with the pairwise teacher's P(d_i > d_j).
"""

from __future__ import annotations

import math
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
    positive_index: int | None
    pairs: list[tuple[int, int, float]] = field(default_factory=list)  # (i, j, P(d_i > d_j))


def build_groups(pointwise: pd.DataFrame, pairwise: pd.DataFrame, positives: dict[str, set[str]], *,
                 nway: int, use_labels: bool, seed: int) -> tuple[list[Group], dict]:
    """Training groups of exactly ``nway`` passages; returns them and counts of what was skipped.

    With ``use_labels``, a query needs a labelled positive in its list (the pointwise stage adds
    every labelled positive to it) and the other labelled positives are left out of the group,
    since the contrastive term would push them down as negatives.
    """
    rng = np.random.default_rng(seed)
    pairs_by_q = {q: df for q, df in pairwise.groupby("query_id", sort=False)}
    groups, skipped_short, skipped_unlabelled = [], 0, 0
    for qid, ranked in pointwise.sort_values(["query_id", "teacher_rank"]).groupby("query_id", sort=True):
        doc_ids = ranked["doc_id"].tolist()
        score_of = dict(zip(doc_ids, ranked["teacher_score"].astype(float)))
        pos = positives.get(qid, set())
        chosen: list[str] = []
        positive_index = None
        if use_labels:
            labelled = [d for d in doc_ids if d in pos]
            if not labelled:
                skipped_unlabelled += 1
                continue
            chosen.append(labelled[0])  # the teacher's best-ranked labelled positive
            positive_index = 0
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
        groups.append(Group(qid, chosen, [score_of[d] for d in chosen], positive_index, group_pairs))
    stats = {"groups": len(groups), "skipped_short_list": skipped_short,
             "skipped_no_positive": skipped_unlabelled,
             "pairs_in_groups": sum(len(g.pairs) for g in groups),
             "pairs_sampled": int(len(pairwise))}
    return groups, stats


def _linear_schedule(optimizer, warmup_steps: int, total_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _maxsim(Q: torch.Tensor, D: torch.Tensor, D_mask: torch.Tensor) -> torch.Tensor:
    """ColBERT scores of every query against every passage: (nq, Lq, dim) x (nd, Ld, dim) -> (nq, nd)."""
    sim = torch.einsum("qid,pjd->qpij", Q, D)
    sim = sim.masked_fill(~D_mask.squeeze(-1)[None, :, None, :], -1e4)
    return sim.max(-1).values.sum(-1)


def train(checkpoint_in: str, checkpoint_out: str | Path, loss_out: str | Path, *, corpus_texts: dict[str, str],
          query_texts: dict[str, str], groups: list[Group], nway: int, batch_size: int, epochs: int,
          max_steps: int | None, lr: float, warmup: float, weight_decay: float, lambda_kd: float,
          lambda_pair: float, temperature: float, use_labels: bool, in_batch_negatives: bool,
          query_maxlen: int, doc_maxlen: int, seed: int, grad_clip: float = 1.0) -> dict:
    """Train and save ``checkpoint_out`` plus the loss curve ``loss_out``; returns run statistics."""
    from accelerate import Accelerator
    from colbert.modeling.tokenization import DocTokenizer, QueryTokenizer

    if not groups:
        raise ValueError("no training groups: every query was skipped (see the group statistics in the log)")
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
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    loss_fn = PairDistillLoss(lambda_kd=lambda_kd, lambda_pair=lambda_pair, temperature=temperature,
                              use_labels=use_labels)

    rng = np.random.default_rng(seed)
    print(f"training on {len(groups)} groups: {total} steps of {batch_size} queries x {nway} passages",
          flush=True)
    progress = Progress(total, "train", unit="steps")
    rows, step, start = [], 0, time.monotonic()
    while step < total:
        order = rng.permutation(len(groups))
        for b0 in range(0, len(order), batch_size):
            if step >= total:
                break
            batch = [groups[i] for i in order[b0:b0 + batch_size]]
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
                positive_index = torch.tensor([g.positive_index for g in batch], device=scores.device)
            if use_labels and wide is not None:
                # in-batch: query b's positive is column b*nway + its index in its own group
                parts = loss_fn(scores, teacher, pair_index, teacher_prob, contrastive_scores=wide,
                                positive_index=torch.arange(B, device=scores.device) * nway + positive_index)
            else:
                parts = loss_fn(scores, teacher, pair_index, teacher_prob, positive_index=positive_index)
            optimizer.zero_grad()
            accelerator.backward(parts["loss"])
            if grad_clip:
                accelerator.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            scheduler.step()
            rows.append({"step": step, **{k: float(v.detach()) for k, v in parts.items()},
                         "lr": float(scheduler.get_last_lr()[0]), "elapsed_s": time.monotonic() - start})
            step += 1
            progress.update(1)
            if step % 10 == 0 or step == total:
                r = rows[-1]
                print(f"step {step}/{total} loss {r['loss']:.4f} cl {r['loss_cl']:.4f} "
                      f"kd {r['loss_kd']:.4f} pair {r['loss_pair']:.4f} lr {r['lr']:.2e}", flush=True)
    model = accelerator.unwrap_model(model)
    model.eval()
    student.save_student(model, checkpoint_out)
    io.write_table(pd.DataFrame(rows), "loss", loss_out)
    return {"steps": step, "groups": len(groups), "first_loss": rows[0]["loss"], "last_loss": rows[-1]["loss"],
            "seconds": time.monotonic() - start}


def _maxsim_aligned(Q: torch.Tensor, D: torch.Tensor, D_mask: torch.Tensor, nway: int) -> torch.Tensor:
    """Each query against its own ``nway`` passages only: (B, Lq, dim), (B*nway, Ld, dim) -> (B, nway)."""
    B = Q.size(0)
    Dv = D.view(B, nway, D.size(1), D.size(2))
    Mv = D_mask.view(B, nway, D.size(1))
    sim = torch.einsum("bid,bpjd->bpij", Q, Dv)
    sim = sim.masked_fill(~Mv[:, :, None, :], -1e4)
    return sim.max(-1).values.sum(-1)
