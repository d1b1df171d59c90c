"""The data-parallel exchange (one process per GPU, launched by the job): every process's
embeddings gathered into the whole batch (its own keep their graph), the parameter gradients
summed, the starting weights broadcast, and the few objects the processes share (their group
counts and digests, the data positions a resumable state saves). The model is not wrapped in
DDP: the processes do this themselves.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
import torch

from .batches import Batch, Group, _layout, groups_digest


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


def gather_objects(obj, world: int) -> list:
    """Every process's ``obj`` (anything picklable), in rank order."""
    import torch.distributed as dist

    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def share_counts(groups: list[Group], query_texts: dict[str, str], world: int, *,
                 with_digest: bool) -> tuple[int, str | None]:
    """(the groups of every process, one digest over every process's groups when ``with_digest``);
    one process: its own count and no digest (its fingerprint digests its groups itself)."""
    if world == 1:
        return len(groups), None
    counts = gather_objects((len(groups), groups_digest(groups, query_texts) if with_digest else ""), world)
    if min(c for c, _ in counts) == 0:
        raise ValueError(f"no training groups in some process's share (groups per process: "
                         f"{[c for c, _ in counts]}): too few queries for {world} processes")
    return sum(c for c, _ in counts), hashlib.sha256("".join(d for _, d in counts).encode()).hexdigest()


def broadcast_parameters(model) -> None:
    """The main process's weights into every replica: one starting point for all."""
    import torch.distributed as dist

    for t in model.state_dict().values():
        dist.broadcast(t, src=0)
