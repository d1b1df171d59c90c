"""Teacher rerankers: pointwise scores and pairwise preferences, plus fitting a small default.

Two kinds of teacher feed the distillation:

* a **pointwise** reranker scores one (query, passage) pair: :func:`load_pointwise` returns a
  :class:`PointwiseScorer` whose ``score`` gives one float per pair (higher = more relevant);
* a **pairwise** reranker compares two passages for a query: :func:`load_pairwise` returns a
  :class:`PairwiseScorer` whose ``prob`` gives P(doc_a more relevant than doc_b | query).

Families (the ``family`` argument; ``"auto"`` picks one from the model directory):

=================  ==========================================================================
``cross-encoder``  sequence classifier on ``[CLS] q [SEP] d [SEP]`` (ms-marco-MiniLM-L-6-v2)
``monot5``         T5, ``Query: q Document: d Relevant:`` -> log P(true) over {true, false}
``bert-pairwise``  sequence classifier on ``[CLS] q [SEP] a [SEP] b [SEP]`` -> sigmoid(logit)
``duot5``          T5, ``Query: q Document0: a Document1: b Relevant:`` -> P(true)
``fusion``         BM25 and bi-encoder cosines, z-normalised per query, fused with fitted
                   weights (:mod:`pairdistill.fusion`)
``fusion-pairwise``  sigmoid of the fusion's margin plus fitted pair terms (:mod:`pairdistill.fusion`)
=================  ==========================================================================

No MS MARCO reranker can be installed offline, so :func:`fit_pointwise` and
:func:`fit_pairwise` fine-tune a teacher from a local encoder (MiniLM by default) on
``(query, positive, negatives)`` groups; the result is a model directory with a
``pairdistill_teacher.json`` that ``"auto"`` reads back.

All scores are float32 numpy arrays in input order. Inputs are batched by token length (much
less padding, which dominates CPU time) and put back in order afterwards.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from .. import io, runtime
from ..progress import Progress

META_FILE = "pairdistill_teacher.json"
POINTWISE_FAMILIES = ("cross-encoder", "monot5", "fusion")
PAIRWISE_FAMILIES = ("bert-pairwise", "duot5", "fusion-pairwise")
FUSION_FAMILIES = ("fusion", "fusion-pairwise")  # fitted feature fusions (pairdistill.fusion)
DEFAULT_MAX_LENGTH = {"pointwise": 256, "pairwise": 320}

# At most this share of the token budget goes to the query, so a long query cannot squeeze the
# passages out (MS MARCO queries are short; this only bites on odd inputs).
QUERY_SHARE = {"pointwise": 1 / 2, "pairwise": 1 / 3}

MONOT5_TEMPLATE = ("Query:", "q", "Document:", "d", "Relevant:")
DUOT5_TEMPLATE = ("Query:", "q", "Document0:", "a", "Document1:", "b", "Relevant:")

Group = tuple[str, str, Sequence[str]]  # (query, positive, negatives)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

def _locate(model: str) -> str:
    """Resolve a model setting to a local location; FileNotFoundError names it when absent."""
    return runtime.resolve_model(model)


def read_meta(path: str) -> dict | None:
    """The ``pairdistill_teacher.json`` of a model directory, or None (hub models have none)."""
    meta = Path(path) / META_FILE
    if meta.is_file():
        return json.loads(meta.read_text())
    return None


def _model_type(path: str) -> str:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path).model_type
    except OSError as exc:  # offline and not cached: report it as a missing model
        raise FileNotFoundError(f"{path}: model not found (offline; not a directory and not "
                                f"in the local Hugging Face cache)") from exc


def detect_family(path: str, kind: str) -> str:
    """The family of the model at ``path`` for ``kind`` ("pointwise" or "pairwise")."""
    meta = read_meta(path)
    if meta is not None:
        if meta.get("kind") != kind:
            raise ValueError(f"{path}: a {meta.get('kind')} teacher, not a {kind} one ({META_FILE})")
        return meta["family"]
    if not (Path(path) / "config.json").exists() and Path(path).is_dir():
        raise ValueError(f"{path}: neither a transformers model (no config.json) nor a fitted teacher ({META_FILE})")
    is_t5 = _model_type(path) == "t5"
    if kind == "pointwise":
        return "monot5" if is_t5 else "cross-encoder"
    return "duot5" if is_t5 else "bert-pairwise"


def load_tokenizer(path: str):
    """AutoTokenizer, falling back to the slow one when the fast one cannot be built.

    castorini's T5 checkpoints ship only ``spiece.model``; converting that to a fast tokenizer
    needs protobuf, which the offline environment may lack, while the slow one needs only
    sentencepiece.
    """
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except ImportError:
        tokenizer = AutoTokenizer.from_pretrained(path, use_fast=False)
    # Silence two warnings that do not apply: passages are tokenised whole before budgets are
    # applied (never fed to the model that long), and pre-tokenised features are padded per
    # length-sorted batch on purpose. transformers skips a warning whose key is already set.
    tokenizer.deprecation_warnings["sequence-length-is-longer-than-the-specified-maximum"] = True
    tokenizer.deprecation_warnings["Asking-to-pad-a-fast-tokenizer"] = True
    return tokenizer


def _load_model(path: str, family: str, dev: torch.device):
    from transformers import AutoModelForSequenceClassification, T5ForConditionalGeneration

    if family in ("monot5", "duot5"):
        model = T5ForConditionalGeneration.from_pretrained(path)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(path)
    return model.to(dev).eval()


def _resolve(model: str, family: str, kind: str, max_length: int | None):
    """(path, family, max_length) for a model setting, honouring the teacher metadata."""
    path = _locate(model)
    if family == "auto":
        family = detect_family(path, kind)
    allowed = POINTWISE_FAMILIES if kind == "pointwise" else PAIRWISE_FAMILIES
    if family not in allowed:
        raise ValueError(f"unknown {kind} family {family!r}; expected one of {allowed} or 'auto'")
    if family in FUSION_FAMILIES:
        meta = read_meta(path)
        if meta is None or meta.get("family") != family:
            raise ValueError(f"{path}: family {family!r} needs a fitted {family} teacher directory ({META_FILE})")
    if max_length is None:
        meta = read_meta(path) or {}
        max_length = int(meta.get("max_length", DEFAULT_MAX_LENGTH[kind]))
    return path, family, max_length


def identity(model: str, family: str, kind: str, max_length: int | None, precision: str = "fp32") -> str:
    """Which teacher produced a score, as a JSON string stored with the scores: family, token
    budget, the model's :func:`runtime.model_fingerprint` and, unless fp32, the dtype it scores in
    on this job's device (:func:`scoring_precision`). A score is reused from an earlier iteration's
    file only when this matches exactly."""
    path, family, max_length = _resolve(model, family, kind, max_length)
    out = {"kind": kind, "family": family, "max_length": max_length, "fingerprint": runtime.model_fingerprint(path)}
    dtype = scoring_precision(precision, kind, family)
    if dtype != "fp32":
        out["precision"] = dtype
    return json.dumps(out, sort_keys=True)


def scoring_precision(precision: str, kind: str, family: str, device: str | torch.device = "auto") -> str:
    """The dtype ``teachers.<kind>.precision`` scores in on this job's device: ``auto`` is bf16 on a
    GPU that has it, else fp32; fp16 without a GPU is a SettingError naming the key. The fusion
    families (BM25 and small bi-encoders) always score in fp32. Both the cache identity and the
    loaders ask this, so a score's recorded dtype is the one it was made in."""
    from ..train import resolve_precision

    if family.startswith("fusion"):
        return "fp32"
    dev = device if isinstance(device, torch.device) else runtime.device(device)
    return resolve_precision(precision, dev, key=f"teachers.{kind}.precision")


# --------------------------------------------------------------------------------------------
# Encoding: every function returns a list of un-padded feature dicts, one per input
# --------------------------------------------------------------------------------------------

def _token_ids(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text without special tokens (no truncation: budgets are applied later)."""
    if len(texts) == 0:
        return []
    return tokenizer(list(texts), add_special_tokens=False)["input_ids"]


def _truncate_texts(tokenizer, texts: Sequence[str], budgets: Sequence[int]) -> list[str]:
    """Cut each text to at most its budget of tokens, keeping the text itself verbatim.

    Fast tokenizers cut at the character offset where the budget-th token ends; slow ones
    fall back to detokenising the kept tokens. Texts within budget are returned unchanged.
    """
    texts = list(texts)
    if tokenizer.is_fast:
        enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        out = []
        for text, offsets, budget in zip(texts, enc["offset_mapping"], budgets):
            budget = max(int(budget), 1)
            out.append(text if len(offsets) <= budget else text[: offsets[budget - 1][1]])
        return out
    out = []
    for text, budget in zip(texts, budgets):
        tokens = tokenizer.tokenize(text)
        budget = max(int(budget), 1)
        out.append(text if len(tokens) <= budget else tokenizer.convert_tokens_to_string(tokens[:budget]))
    return out


def _split_features(enc) -> list[dict]:
    keys = [k for k in ("input_ids", "token_type_ids", "attention_mask") if k in enc]
    return [{k: enc[k][i] for k in keys} for i in range(len(enc["input_ids"]))]


def encode_cross(tokenizer, queries: Sequence[str], docs: Sequence[str], max_length: int) -> list[dict]:
    """``[CLS] q [SEP] d [SEP]`` features; the passage is truncated ("only_second")."""
    q_budget = int(max_length * QUERY_SHARE["pointwise"])
    queries = _truncate_texts(tokenizer, queries, [q_budget] * len(queries))
    enc = tokenizer(list(queries), list(docs), truncation="only_second", max_length=max_length)
    return _split_features(enc)


def encode_bert_pairwise(tokenizer, queries: Sequence[str], docs_a: Sequence[str],
                         docs_b: Sequence[str], max_length: int) -> list[dict]:
    """``[CLS] q [SEP] a [SEP] b [SEP]`` features, segment 0 for ``q`` and ``a``, 1 for ``b``.

    The segment ids tell the two passages apart; with both in one segment only position
    embeddings would, and a classifier fitted in few steps stays near P = 0.5. After the
    (capped) query and the special tokens, the two passages each get an equal share of the
    remaining budget, so a long ``a`` cannot push ``b`` out of the input.
    """
    sep = tokenizer.sep_token
    n = len(queries)
    queries = _truncate_texts(tokenizer, queries, [int(max_length * QUERY_SHARE["pairwise"])] * n)
    n_special = len(tokenizer("", f" {sep} ")["input_ids"])  # [CLS] [SEP] [SEP] [SEP] for BERT
    q_len = [len(ids) for ids in _token_ids(tokenizer, queries)]
    share = [max((max_length - n_special - ql) // 2, 1) for ql in q_len]
    docs_a = _truncate_texts(tokenizer, docs_a, share)
    docs_b = _truncate_texts(tokenizer, docs_b, share)
    firsts = [f"{q} {sep} {a}" for q, a in zip(queries, docs_a)]
    # Re-tokenising a cut text can differ by a token at the cut; truncation is the safety net.
    enc = tokenizer(firsts, list(docs_b), truncation="longest_first", max_length=max_length)
    return _split_features(enc)


def _encode_t5(tokenizer, template: tuple[str, ...], fields: dict[str, Sequence[str]],
               max_length: int, query_share: float) -> list[dict]:
    """T5 inputs built from token ids of the template pieces and the (budgeted) fields.

    T5's sentencepiece never merges across whitespace, so tokenising the pieces separately
    gives the same ids as tokenising the whole prompt, while letting each field be truncated
    exactly: the query to its share, then the passages to equal shares of what is left.
    """
    fixed = [p for p in template if p not in fields]
    fixed_ids = dict(zip(fixed, _token_ids(tokenizer, fixed)))
    n_fixed = sum(len(v) for v in fixed_ids.values()) + 1  # + </s>
    field_ids = {k: _token_ids(tokenizer, v) for k, v in fields.items()}
    docs = [k for k in fields if k != "q"]
    eos = tokenizer.eos_token_id
    features = []
    for i in range(len(fields["q"])):
        q = field_ids["q"][i][: max(int(max_length * query_share), 1)]
        share = max((max_length - n_fixed - len(q)) // len(docs), 1)
        parts = {"q": q, **{k: field_ids[k][i][:share] for k in docs}}
        ids = [t for piece in template for t in (parts[piece] if piece in parts else fixed_ids[piece])]
        ids = ids[: max_length - 1] + [eos]
        features.append({"input_ids": ids, "attention_mask": [1] * len(ids)})
    return features


def encode_monot5(tokenizer, queries, docs, max_length: int) -> list[dict]:
    """``Query: q Document: d Relevant:</s>`` ids."""
    return _encode_t5(tokenizer, MONOT5_TEMPLATE, {"q": queries, "d": docs}, max_length,
                      QUERY_SHARE["pointwise"])


def encode_duot5(tokenizer, queries, docs_a, docs_b, max_length: int) -> list[dict]:
    """``Query: q Document0: a Document1: b Relevant:</s>`` ids."""
    return _encode_t5(tokenizer, DUOT5_TEMPLATE, {"q": queries, "a": docs_a, "b": docs_b},
                      max_length, QUERY_SHARE["pairwise"])


def true_false_ids(tokenizer) -> tuple[int, int]:
    """Ids of "true" and "false" as the first decoded token (▁true / ▁false for castorini)."""
    return (tokenizer.encode("true", add_special_tokens=False)[0],
            tokenizer.encode("false", add_special_tokens=False)[0])


# --------------------------------------------------------------------------------------------
# Batched inference
# --------------------------------------------------------------------------------------------

def _run_batched(features: list[dict], tokenizer, batch_size: int, forward: Callable,
                 dev: torch.device, progress_label: str | None, unit: str) -> np.ndarray:
    """``forward(padded batch) -> 1-d tensor`` over length-sorted batches, in input order.

    Longest batches run first, so a memory problem shows at once rather than at the end.
    """
    out = np.empty(len(features), dtype=np.float32)
    if not features:
        return out
    lengths = np.array([len(f["input_ids"]) for f in features])
    order = np.argsort(-lengths, kind="stable")
    progress = Progress(len(features), progress_label, unit=unit) if progress_label else None
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            batch = tokenizer.pad([features[i] for i in idx], return_tensors="pt")
            batch = {k: v.to(dev) for k, v in batch.items()}
            out[idx] = forward(batch).float().cpu().numpy()
            if progress:
                progress.update(len(idx))
    return out


def _check_lengths(*seqs: Sequence) -> None:
    if len({len(s) for s in seqs}) > 1:
        raise ValueError(f"inputs differ in length: {[len(s) for s in seqs]}")


def _t5_first_step_logits(model, batch: dict) -> torch.Tensor:
    """Vocabulary logits of the first decoding step (decoder fed only the start token)."""
    start = model.config.decoder_start_token_id
    dec = torch.full((batch["input_ids"].shape[0], 1), start, dtype=torch.long,
                     device=batch["input_ids"].device)
    return model(**batch, decoder_input_ids=dec).logits[:, 0, :]


@dataclass
class _LoadedTeacher:
    model: object
    tokenizer: object
    family: str
    max_length: int
    batch_size: int
    device: torch.device
    path: str


class PointwiseScorer(_LoadedTeacher):
    """A loaded pointwise teacher; ``score(queries, docs)`` -> float32 relevance per pair."""

    def encode(self, queries: Sequence[str], docs: Sequence[str]) -> list[dict]:
        if self.family == "monot5":
            return encode_monot5(self.tokenizer, queries, docs, self.max_length)
        return encode_cross(self.tokenizer, queries, docs, self.max_length)

    def _forward(self, batch: dict) -> torch.Tensor:
        if self.family == "monot5":
            t, f = true_false_ids(self.tokenizer)
            logits = _t5_first_step_logits(self.model, batch)[:, [t, f]]
            return torch.log_softmax(logits.float(), dim=-1)[:, 0]
        logits = self.model(**batch).logits.float()
        if logits.shape[-1] == 1:
            return logits[:, 0]
        # Two-label classifiers: log P(relevant); ranks like logit[1] - logit[0].
        return torch.log_softmax(logits, dim=-1)[:, 1]

    def score(self, queries: Sequence[str], docs: Sequence[str],
              progress_label: str | None = None) -> np.ndarray:
        """One score per (query, doc) pair, float32, in input order; higher = more relevant."""
        _check_lengths(queries, docs)
        if len(queries) == 0:  # tokenizers reject an empty batch
            return np.empty(0, dtype=np.float32)
        return _run_batched(self.encode(queries, docs), self.tokenizer, self.batch_size,
                            self._forward, self.device, progress_label, "pairs")


class PairwiseScorer(_LoadedTeacher):
    """A loaded pairwise teacher; ``prob(q, a, b)`` -> float32 P(a more relevant than b)."""

    def encode(self, queries, docs_a, docs_b) -> list[dict]:
        if self.family == "duot5":
            return encode_duot5(self.tokenizer, queries, docs_a, docs_b, self.max_length)
        return encode_bert_pairwise(self.tokenizer, queries, docs_a, docs_b, self.max_length)

    def _forward(self, batch: dict) -> torch.Tensor:
        if self.family == "duot5":
            t, f = true_false_ids(self.tokenizer)
            logits = _t5_first_step_logits(self.model, batch)[:, [t, f]]
            return torch.softmax(logits.float(), dim=-1)[:, 0]
        logits = self.model(**batch).logits.float()
        if logits.shape[-1] == 1:
            return torch.sigmoid(logits[:, 0])
        return torch.softmax(logits, dim=-1)[:, 1]

    def prob(self, queries: Sequence[str], docs_a: Sequence[str], docs_b: Sequence[str],
             progress_label: str | None = None) -> np.ndarray:
        """P(doc_a more relevant than doc_b | query) per triple, float32, in input order."""
        _check_lengths(queries, docs_a, docs_b)
        if len(queries) == 0:
            return np.empty(0, dtype=np.float32)
        return _run_batched(self.encode(queries, docs_a, docs_b), self.tokenizer, self.batch_size,
                            self._forward, self.device, progress_label, "pairs")


class FusionScorer(_LoadedTeacher):
    """A fitted ``fusion`` teacher; ``model`` is its :class:`pairdistill.fusion.Features`, and
    ``score`` works as :class:`PointwiseScorer`'s. The bi-encoders keep their fitted token budget."""

    def score(self, queries: Sequence[str], docs: Sequence[str], progress_label: str | None = None) -> np.ndarray:
        _check_lengths(queries, docs)
        return self.model.score(list(queries), list(docs), progress_label)


class FusionPairwiseScorer(_LoadedTeacher):
    """A fitted ``fusion-pairwise`` teacher; ``model`` is its :class:`pairdistill.fusion.PairwiseFusion`."""

    def prob(self, queries, docs_a, docs_b, progress_label: str | None = None) -> np.ndarray:
        _check_lengths(queries, docs_a, docs_b)
        return self.model.prob(list(queries), list(docs_a), list(docs_b), progress_label)


def _in_precision(model, precision: str, dev: torch.device, kind: str, family: str):
    """The teacher in the dtype :func:`scoring_precision` gives ``precision`` on ``dev``."""
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    return model.to(dtype[scoring_precision(precision, kind, family, dev)])


def load_pointwise(model: str, family: str = "auto", max_length: int | None = None,
                   device: str = "auto", batch_size: int = 32, precision: str = "fp32") -> PointwiseScorer:
    """Load a pointwise teacher. ``max_length`` defaults to the fitted value, else 256.

    ``model`` is a path, a cached hub id or ``"minilm"``; a missing one raises FileNotFoundError.
    """
    path, family, max_length = _resolve(model, family, "pointwise", max_length)
    dev = runtime.device(device)
    if family == "fusion":
        from ..fusion import Features

        return FusionScorer(Features(path, device=str(dev), batch_size=batch_size), None, family, max_length,
                            batch_size, dev, path)
    return PointwiseScorer(_in_precision(_load_model(path, family, dev), precision, dev, "pointwise", family),
                           load_tokenizer(path), family,
                           max_length, batch_size, dev, path)


def load_pairwise(model: str, family: str = "auto", max_length: int | None = None,
                  device: str = "auto", batch_size: int = 16, precision: str = "fp32") -> PairwiseScorer:
    """Load a pairwise teacher. ``max_length`` defaults to the fitted value, else 320."""
    path, family, max_length = _resolve(model, family, "pairwise", max_length)
    dev = runtime.device(device)
    if family == "fusion-pairwise":
        from ..fusion import PairwiseFusion

        return FusionPairwiseScorer(PairwiseFusion(path, device=str(dev), batch_size=batch_size), None, family,
                                    max_length, batch_size, dev, path)
    return PairwiseScorer(_in_precision(_load_model(path, family, dev), precision, dev, "pairwise", family),
                          load_tokenizer(path), family,
                          max_length, batch_size, dev, path)


# --------------------------------------------------------------------------------------------
# Fitting the embedded default teachers
# --------------------------------------------------------------------------------------------

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
