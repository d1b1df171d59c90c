"""A step's data: training groups (one per query), the tokenized batch a process takes of them,
where the passages of the whole batch sit, and the data position through the groups.

:func:`build_groups` makes the groups, :func:`make_batch` tokenizes a process's share of a step,
:class:`Layout` places every passage of the (gathered) batch, :func:`next_picks` draws the next
step's groups from the loop's RNG, and :func:`groups_digest` fingerprints the groups for the
resumable state.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch


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


def in_batch_positive(positive_index: torch.Tensor, nway: int) -> torch.Tensor:
    """Group-local positive columns (B,) -> columns of the (B, B*nway) in-batch score matrix.

    Query b's positive is column ``b*nway + positive_index[b]``; an unlabelled query (-1) stays
    -1, so no column of the wide matrix (least of all the previous group's last passage) is taken
    as its positive.
    """
    rows = torch.arange(positive_index.shape[0], device=positive_index.device)
    return torch.where(positive_index >= 0, rows * nway + positive_index, torch.full_like(positive_index, -1))


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


def next_picks(groups_n: int, want: int, rng: np.random.Generator, pos_state: dict, world: int = 1):
    """The next step's group indices, advancing the data position ``pos_state`` (its ``epoch``, that
    epoch's permutation ``order`` and the ``pos`` reached in it) in place. One process takes up to
    ``want`` from the current epoch, so an epoch's last step may be short; several fill every step
    (:func:`_next_local`)."""
    if world > 1:
        return _next_local(groups_n, want, rng, pos_state)
    if pos_state["order"] is None or pos_state["pos"] >= len(pos_state["order"]):
        pos_state["order"], pos_state["pos"], pos_state["epoch"] = rng.permutation(groups_n), 0, pos_state["epoch"] + 1
    picked = pos_state["order"][pos_state["pos"]:pos_state["pos"] + want]
    pos_state["pos"] += len(picked)
    return picked
