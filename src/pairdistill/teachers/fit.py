"""Fitting the embedded default's own reranker teachers (``cross-encoder``, ``bert-pairwise``)
from a local encoder on ``(query, positive, negatives)`` groups."""

from __future__ import annotations

import json
import math
import time
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from .. import io, runtime
from ..progress import Progress
from .base import META_FILE, _locate, load_tokenizer
from .rerankers import encode_bert_pairwise, encode_cross

Group = tuple[str, str, Sequence[str]]  # (query, positive, negatives)


def _fit(examples: list, batch_loss: Callable, model, tokenizer, out_dir, meta: dict, *,
         batch_size: int, epochs: int, lr: float, warmup: float, seed: int, loss_log,
         label: str, device: str) -> dict:
    """Shared loop: seeded shuffles, AdamW with linear warmup/decay, clipped grads, atomic save.

    ``batch_loss(model, tokenizer, examples, device) -> scalar loss`` for one batch of examples.
    """
    from transformers import get_linear_schedule_with_warmup

    if not examples:
        raise ValueError(f"{label}: no training examples")
    dev = runtime.device(device)
    model.to(dev).train()
    steps_per_epoch = math.ceil(len(examples) / batch_size)
    total = steps_per_epoch * epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(warmup * total), total)
    rng = np.random.default_rng(seed)
    progress = Progress(total, label, unit="steps")
    rows, start = [], time.monotonic()
    for _ in range(epochs):
        perm = rng.permutation(len(examples))
        for s in range(steps_per_epoch):
            batch = [examples[i] for i in perm[s * batch_size:(s + 1) * batch_size]]
            step_lr = scheduler.get_last_lr()[0]
            loss = batch_loss(model, tokenizer, batch, dev)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            rows.append((len(rows) + 1, float(loss.detach()), step_lr, time.monotonic() - start))
            progress.update(1)
    model.eval()
    with io.atomic_path(out_dir, is_dir=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    curve = pd.DataFrame(rows, columns=["step", "loss", "lr", "elapsed_s"])
    if loss_log is not None:
        io.write_table(curve, "teacher_loss", loss_log)
    return {"steps": total, "examples": len(examples), "first_loss": rows[0][1],
            "final_loss": rows[-1][1], "seconds": time.monotonic() - start}


def _init_classifier(init: str, seed: int):
    """(model, tokenizer) with a fresh 1-logit head on ``init``; seeded so the head is too."""
    from transformers import AutoModelForSequenceClassification, logging as hf_logging

    path = _locate(init)
    runtime.seed_everything(seed)
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized classifier" is expected here
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    finally:
        hf_logging.set_verbosity(level)
    return model, load_tokenizer(path)


def _to_device(features: list[dict], tokenizer, dev) -> dict:
    return {k: v.to(dev) for k, v in tokenizer.pad(features, return_tensors="pt").items()}


def fit_pointwise(groups: Sequence[Group], init: str, out_dir, *, max_length: int = 256,
                  batch_size: int = 8, epochs: int = 1, lr: float = 3e-5, warmup: float = 0.1,
                  seed: int = 0, loss_log=None, device: str = "auto") -> dict:
    """Fine-tune a cross-encoder on ``(query, positive, negatives)`` groups into ``out_dir``.

    Localized contrastive loss: cross-entropy over each group's logits with the positive at
    index 0. ``batch_size`` counts groups per step. Returns stats (steps, first/final loss,
    seconds); with ``loss_log``, also writes the per-step curve as a ``teacher_loss`` table.
    """
    model, tokenizer = _init_classifier(init, seed)

    def batch_loss(model, tokenizer, batch, dev):
        sizes = [1 + len(negs) for _, _, negs in batch]
        queries = [q for (q, _, negs), n in zip(batch, sizes) for _ in range(n)]
        docs = [d for _, pos, negs in batch for d in [pos, *negs]]
        logits = model(**_to_device(encode_cross(tokenizer, queries, docs, max_length),
                                    tokenizer, dev)).logits[:, 0]
        # Groups may hold different numbers of negatives: one cross-entropy per group.
        losses = [torch.nn.functional.cross_entropy(g[None], g.new_zeros(1, dtype=torch.long))
                  for g in torch.split(logits, sizes)]
        return torch.stack(losses).mean()

    meta = {"kind": "pointwise", "family": "cross-encoder", "max_length": max_length,
            "init": init, "loss": "localized-contrastive"}
    return _fit(list(groups), batch_loss, model, tokenizer, out_dir, meta, batch_size=batch_size,
                epochs=epochs, lr=lr, warmup=warmup, seed=seed, loss_log=loss_log,
                label="fit-pointwise", device=device)


def fit_pairwise(groups: Sequence[Group], init: str, out_dir, *, max_length: int = 320,
                 batch_size: int = 8, epochs: int = 1, lr: float = 3e-5, warmup: float = 0.1,
                 seed: int = 0, loss_log=None, device: str = "auto") -> dict:
    """Fine-tune a "bert-pairwise" reranker on ``(query, positive, negatives)`` groups.

    Every (positive, negative) pair is an example seen in both orders, binary cross-entropy on
    (q, pos, neg) -> 1 and (q, neg, pos) -> 0, so the model cannot lean on position.
    ``batch_size`` counts pairs per step (2 * batch_size inputs). Saving and stats as
    :func:`fit_pointwise`.
    """
    model, tokenizer = _init_classifier(init, seed)
    pairs = [(q, pos, neg) for q, pos, negs in groups for neg in negs]

    def batch_loss(model, tokenizer, batch, dev):
        queries = [q for q, _, _ in batch] * 2
        docs_a = [p for _, p, _ in batch] + [n for _, _, n in batch]
        docs_b = [n for _, _, n in batch] + [p for _, p, _ in batch]
        labels = torch.tensor([1.0] * len(batch) + [0.0] * len(batch), device=dev)
        feats = encode_bert_pairwise(tokenizer, queries, docs_a, docs_b, max_length)
        logits = model(**_to_device(feats, tokenizer, dev)).logits[:, 0]
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)

    meta = {"kind": "pairwise", "family": "bert-pairwise", "max_length": max_length,
            "init": init, "loss": "bce-both-orders"}
    return _fit(pairs, batch_loss, model, tokenizer, out_dir, meta, batch_size=batch_size,
                epochs=epochs, lr=lr, warmup=warmup, seed=seed, loss_log=loss_log,
                label="fit-pairwise", device=device)
