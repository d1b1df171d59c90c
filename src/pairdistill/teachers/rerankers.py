"""The reranker families: ``cross-encoder`` and ``monot5`` (pointwise), ``bert-pairwise`` and
``duot5`` (pairwise), a sequence classifier or castorini's T5 prompt format."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .base import (QUERY_SHARE, _check_lengths, _in_precision, _LoadedTeacher, _run_batched, _split_features,
                   _t5_first_step_logits, _token_ids, _truncate_texts, load_tokenizer)

MONOT5_TEMPLATE = ("Query:", "q", "Document:", "d", "Relevant:")
DUOT5_TEMPLATE = ("Query:", "q", "Document0:", "a", "Document1:", "b", "Relevant:")


def _load_model(path: str, family: str, dev: torch.device):
    from transformers import AutoModelForSequenceClassification, T5ForConditionalGeneration

    if family in ("monot5", "duot5"):
        model = T5ForConditionalGeneration.from_pretrained(path)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(path)
    return model.to(dev).eval()


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


_CALIBRATION_QUERIES = ["what is the capital of france", "how do vaccines work", "symptoms of vitamin d deficiency",
                        "who wrote the origin of species"]
_CALIBRATION_PASSAGES = ["Paris is the capital and most populous city of France.",
                         "Vaccines train the immune system to recognise a pathogen without causing the disease.",
                         "Low vitamin D can cause bone pain, muscle weakness and fatigue.",
                         "Charles Darwin published On the Origin of Species in 1859.",
                         "The Amazon is the largest rainforest on Earth.",
                         "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen."]


def _calibration_features(tokenizer, family: str, kind: str, max_length: int) -> list[dict]:
    """16 query-passage inputs of the family's format: openvino int8's (NNCF) calibration of a
    classifier, made at load time, before any of the job's pairs are known."""
    n = 16
    q = [_CALIBRATION_QUERIES[i % 4] for i in range(n)]
    a = [_CALIBRATION_PASSAGES[i % 6] for i in range(n)]
    b = [_CALIBRATION_PASSAGES[(i + 1 + i // 6) % 6] for i in range(n)]
    if kind == "pointwise":
        return encode_cross(tokenizer, q, a, max_length)
    return encode_bert_pairwise(tokenizer, q, a, b, max_length)


def load(path: str, family: str, kind: str, max_length: int, dev: torch.device, batch_size: int,
         precision: str) -> PointwiseScorer | PairwiseScorer:
    """A :class:`PointwiseScorer` or :class:`PairwiseScorer` of the model at ``path``, in ``precision``."""
    scorer = PointwiseScorer if kind == "pointwise" else PairwiseScorer
    from ..inference import pipeline

    if pipeline.active():  # inference.*: an exported scorer in place of the torch model
        tokenizer = load_tokenizer(path)
        calib = None
        if pipeline.needs_calibration():
            calib = [tokenizer.pad(_calibration_features(tokenizer, family, kind, max_length)[i:i + 4],
                                   return_tensors="pt") for i in range(0, 16, 4)]
        model = pipeline.scorer(path, family in ("monot5", "duot5"), dev, calib)
        return scorer(model, tokenizer, family, max_length, batch_size, dev, path)
    return scorer(_in_precision(_load_model(path, family, dev), precision, dev, kind, family),
                  load_tokenizer(path), family,
                  max_length, batch_size, dev, path)
