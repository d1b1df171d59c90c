"""The instruction teachers: a prompted language model as a pointwise or pairwise reranker.

The paper's alternative teachers (Section 4.1, Appendix C.1) prompt google/flan-t5-xl:

* ``instruct-pointwise`` asks whether a passage is relevant to the query; the score is
  log P(yes) over the two label words {yes, no}, read at the first answer position;
* ``instruct-pairwise`` asks which of two passages is more relevant ("Answer only 'A' or
  'B'."); the probability is P(A) over {A, B}.

Both work with a sequence-to-sequence model (T5, flan-t5: the first decoder step's logits) and
with a decoder-only causal LM (the next-token logits after the prompt, at each row's last real
token, so left and right padding give the same scores). The prompt is the template
``teachers.<kind>.prompt`` with ``{query}`` and ``{passage}`` (pairwise: ``{query}``,
``{passage_a}``, ``{passage_b}``); the label words ``teachers.<kind>.labels`` must each be one
token of the model's vocabulary. The token budget ``max_length`` cuts the passages (then, only if
they are down to one token, the query), never the instruction.
"""

from __future__ import annotations

import inspect
import string
from dataclasses import dataclass
from typing import Sequence

import torch

from ..errors import SettingError
from .base import QUERY_SHARE, _t5_first_step_logits, _truncate_texts, load_tokenizer, scoring_precision
from .rerankers import PairwiseScorer, PointwiseScorer

# The prompts of the authors' InstUPR reranking scripts for google/flan-t5-xl (MiuLab/PairDistill,
# pointwise_rerank_instupr.py and pairwise_rerank_instupr.py), the wording of the paper's Appendix
# C.1 as far as known. Their label tokens are flan-t5's "▁Yes"/"▁No" and "▁A"/"▁B".
DEFAULT_PROMPT = {
    "pointwise": "Is the document relevant to the query (Yes or No)?\n\nQuery: {query}\n\nDocument: {passage}",
    "pairwise": ("Which document is more relevant to the query? Answer only 'A' or 'B'.\n\n"
                 "Query: {query}\n\nDocument A: {passage_a}\n\nDocument B: {passage_b}"),
}
DEFAULT_LABELS = {"pointwise": ("Yes", "No"), "pairwise": ("A", "B")}
FIELDS = {"pointwise": ("query", "passage"), "pairwise": ("query", "passage_a", "passage_b")}
FAMILY_KIND = {"instruct-pointwise": "pointwise", "instruct-pairwise": "pairwise"}


def check_prompt(template: str, kind: str) -> str:
    """``template`` when it has each field of ``kind`` exactly once and no other; else a
    SettingError naming ``teachers.<kind>.prompt``."""
    key, fields = f"teachers.{kind}.prompt", FIELDS[kind]
    want = ", ".join("{" + f + "}" for f in fields)
    if not isinstance(template, str) or not template.strip():
        raise SettingError(f"{key}: expected a template with {want}, got {template!r}")
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise SettingError(f"{key}: {exc} (write a literal brace as {{{{ or }}}})") from None
    seen = []
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in fields:
            raise SettingError(f"{key}: unknown field {{{name}}} (the fields are {want})")
        if spec or conversion:
            raise SettingError(f"{key}: write the field {{{name}}} plainly, without a conversion or format")
        if name in seen:
            raise SettingError(f"{key}: the field {{{name}}} appears twice (each of {want} once)")
        seen.append(name)
    missing = [f for f in fields if f not in seen]
    if missing:
        raise SettingError(f"{key}: the template has no {{{missing[0]}}} field (it needs {want})")
    return template


def settings(kind: str, prompt: str | None = None, labels: Sequence[str] | None = None) -> dict:
    """The family's own settings, defaults filled in and checked: ``{"prompt": ..., "labels": [..]}``.
    They are part of the teacher's identity, so a changed prompt or label word rescores."""
    prompt = check_prompt(DEFAULT_PROMPT[kind] if prompt is None else prompt, kind)
    labels = list(DEFAULT_LABELS[kind] if labels is None else labels)
    if len(labels) != 2 or not all(isinstance(w, str) and w.strip() for w in labels) or labels[0] == labels[1]:
        raise SettingError(f"teachers.{kind}.labels: expected two different words "
                           f"(first: {'relevant' if kind == 'pointwise' else 'passage A'}), got {labels!r}")
    return {"prompt": prompt, "labels": labels}


def label_ids(tokenizer, labels: Sequence[str], kind: str) -> list[int]:
    """The vocabulary id of each label word; a word that is not exactly one known token is a
    SettingError naming ``teachers.<kind>.labels``."""
    out = []
    for word in labels:
        ids = tokenizer.encode(word, add_special_tokens=False)
        if len(ids) != 1 or ids[0] == tokenizer.unk_token_id:
            pieces = tokenizer.convert_ids_to_tokens(ids)
            raise SettingError(f"teachers.{kind}.labels: {word!r} is not one token of the teacher's vocabulary "
                               f"(it encodes to {pieces}); pick a word the tokenizer keeps whole")
        out.append(ids[0])
    return out


def _fill(template: str, values: dict[str, str]) -> str:
    # str.format would also read braces inside a passage; the fields were checked by check_prompt
    return "".join(lit + (values[name] if name is not None else "")
                   for lit, name, _, _ in string.Formatter().parse(template))


def encode(tokenizer, template: str, kind: str, fields: dict[str, Sequence[str]], max_length: int,
           strip_eos: bool = False) -> list[dict]:
    """Prompt ids per example, at most ``max_length`` tokens with the tokenizer's special tokens.

    The query keeps at most its share of the budget (:data:`QUERY_SHARE`); the passages share
    what the instruction and the query leave, equally. Each passage is cut in its own text (the
    kept text is verbatim), then the whole prompt is tokenised at once, so tokens that merge across
    a field's edge are the ones the model sees. Where re-tokenising a cut gains a token, the
    passages give it back. ``strip_eos``: drop a trailing end-of-sequence token (a causal LM
    answers after the prompt, not after an end of text).
    """
    names = FIELDS[kind]
    passages = [n for n in names if n != "query"]
    n = len(fields["query"])

    def tokenize(texts: list[str]) -> list[list[int]]:
        ids = tokenizer(texts)["input_ids"]
        if strip_eos and tokenizer.eos_token_id is not None:
            ids = [x[:-1] if x and x[-1] == tokenizer.eos_token_id else x for x in ids]
        return ids

    n_fixed = len(tokenize([_fill(template, {f: "" for f in names})])[0])
    room = max_length - n_fixed
    if room < len(names):
        raise SettingError(f"teachers.{kind}.max_length: {max_length} tokens leave no room for the query and "
                           f"passages after the prompt's {n_fixed}")
    queries = _truncate_texts(tokenizer, fields["query"], [int(max_length * QUERY_SHARE[kind])] * n)
    q_len = [len(x) for x in tokenizer(queries, add_special_tokens=False)["input_ids"]]
    budgets = {"query": [max(int(max_length * QUERY_SHARE[kind]), 1)] * n}
    for p in passages:
        budgets[p] = [max((room - ql) // len(passages), 1) for ql in q_len]

    def build(rows: list[int]) -> list[list[int]]:
        cut = {f: _truncate_texts(tokenizer, [fields[f][i] for i in rows], [budgets[f][i] for i in rows])
               for f in names}
        return tokenize([_fill(template, {f: cut[f][j] for f in names}) for j in range(len(rows))])

    ids = build(list(range(n)))
    over = [i for i in range(n) if len(ids[i]) > max_length]
    if over:  # the longest passage gives back what re-tokenising gained
        p_len = {p: [len(x) for x in tokenizer([fields[p][i] for i in over], add_special_tokens=False)["input_ids"]]
                 for p in passages}
        for j, i in enumerate(over):
            for p in passages:
                budgets[p][i] = min(budgets[p][i], p_len[p][j])
    while over:
        for i in over:
            excess = len(ids[i]) - max_length
            longest = max(passages, key=lambda p: budgets[p][i])
            if budgets[longest][i] > 1:
                budgets[longest][i] = max(budgets[longest][i] - excess, 1)
            elif budgets["query"][i] > 1:
                budgets["query"][i] = max(budgets["query"][i] - excess, 1)
            else:
                raise SettingError(f"teachers.{kind}.max_length: {max_length} tokens cannot hold the prompt "
                                   f"with one token of each field ({len(ids[i])})")
        for i, x in zip(over, build(over)):
            ids[i] = x
        over = [i for i in over if len(ids[i]) > max_length]
    return [{"input_ids": x, "attention_mask": [1] * len(x)} for x in ids]


def _next_token_logits(model, batch: dict, keep_last: bool) -> torch.Tensor:
    """A causal LM's vocabulary logits after each row's last real token, for left or right padding.

    With left padding the positions count real tokens only (``position_ids`` from the mask), so
    an example's logits do not depend on the padding of its batch.
    """
    mask = batch["attention_mask"]
    inputs = dict(batch)
    if not bool(mask[:, 0].all()):  # some row starts with padding
        inputs["position_ids"] = (mask.long().cumsum(1) - 1).clamp(min=0)
    if keep_last and bool(mask[:, -1].all()):  # every row ends in the last column
        return model(**inputs, logits_to_keep=1).logits[:, -1]
    last = mask.shape[1] - 1 - mask.flip(1).long().argmax(1)
    logits = model(**inputs).logits
    return logits[torch.arange(logits.shape[0], device=logits.device), last]


@dataclass
class _Instruct:
    """What both instruction scorers add to the reranker scorers: the prompt, the label ids, and
    which end of the model the answer is read from. Its fields follow the loaded teacher's in
    each scorer (dataclass fields gather from the last base first)."""

    prompt: str = ""
    labels: tuple[str, str] = ("", "")
    label_ids: tuple[int, int] = (0, 0)
    causal: bool = False
    keep_last: bool = False

    def _label_logits(self, batch: dict) -> torch.Tensor:
        if self.causal:
            logits = _next_token_logits(self.model, batch, self.keep_last)
        else:
            logits = _t5_first_step_logits(self.model, batch)
        return logits[:, list(self.label_ids)].float()

    def _encode(self, fields: dict[str, Sequence[str]]) -> list[dict]:
        return encode(self.tokenizer, self.prompt, self.kind, fields, self.max_length, strip_eos=self.causal)


@dataclass
class InstructPointwiseScorer(_Instruct, PointwiseScorer):
    """``score(queries, docs)``: log P(labels[0]) over the two label words, per pair."""

    kind = "pointwise"

    def encode(self, queries: Sequence[str], docs: Sequence[str]) -> list[dict]:
        return self._encode({"query": queries, "passage": docs})

    def _forward(self, batch: dict) -> torch.Tensor:
        return torch.log_softmax(self._label_logits(batch), dim=-1)[:, 0]


@dataclass
class InstructPairwiseScorer(_Instruct, PairwiseScorer):
    """``prob(queries, docs_a, docs_b)``: P(labels[0]) over the two label words, per triple."""

    kind = "pairwise"

    def encode(self, queries, docs_a, docs_b) -> list[dict]:
        return self._encode({"query": queries, "passage_a": docs_a, "passage_b": docs_b})

    def _forward(self, batch: dict) -> torch.Tensor:
        return torch.softmax(self._label_logits(batch), dim=-1)[:, 0]


def load(path: str, family: str, kind: str, max_length: int, dev: torch.device, batch_size: int,
         precision: str, prompt: str, labels: Sequence[str]) -> InstructPointwiseScorer | InstructPairwiseScorer:
    """The prompted model at ``path`` (sequence-to-sequence or causal, from its config) as a scorer
    of ``kind``; ``prompt`` and ``labels`` as :func:`settings` returns them."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    tokenizer = load_tokenizer(path)
    ids = label_ids(tokenizer, labels, kind)
    causal = not AutoConfig.from_pretrained(path).is_encoder_decoder
    if causal:
        if tokenizer.pad_token is None:  # GPT-2, Llama: any id will do, padding is masked
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        tokenizer.padding_side = "left"  # the answer position is then every row's last column
    # loaded straight in the scoring dtype: a 3B model never sits in memory in fp32 first
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[
        scoring_precision(precision, kind, family, dev)]
    auto = AutoModelForCausalLM if causal else AutoModelForSeq2SeqLM
    model = auto.from_pretrained(path, dtype=dtype).to(dev).eval()
    keep_last = causal and "logits_to_keep" in inspect.signature(model.forward).parameters
    scorer = InstructPointwiseScorer if kind == "pointwise" else InstructPairwiseScorer
    return scorer(model, tokenizer, family, max_length, batch_size, dev, path, prompt=prompt,
                  labels=tuple(labels), label_ids=tuple(ids), causal=causal, keep_last=keep_last)
