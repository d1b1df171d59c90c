"""Answer-string matching for open-domain QA, and its metric: Recall@k (DPR's top-k accuracy).

A retrieved passage *has the answer* when one of the question's answer strings, as a token
sequence, occurs in the passage's token sequence. Two normalisations:

- ``string`` (default): DPR's ``has_answer`` with match type string. Unicode NFD, then DrQA's
  uncased SimpleTokenizer: a token is a run of letters, digits and marks, or any single other
  character that is not a space or a control character; tokens lower-cased.
  "The U.S." -> ``the u . s .``; punctuation stays, so "U.S." does not match "US".
- ``squad``: SQuAD's ``normalize_answer``: lower-case, drop ASCII punctuation, drop the articles
  a/an/the, split on whitespace. "The U.S." -> ``us``; "the Beatles" matches "Beatles".

As in DPR, only the passage's text is searched, not its title. An answer that normalises to no
token (``squad``: "The") matches nothing. Recall@k is the fraction of questions with at least one
answer-bearing passage in their top k; a question with no retrieved passage counts as a miss.
"""

from __future__ import annotations

import re
import string
import unicodedata
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import regex

from . import io

# DrQA's / DPR's SimpleTokenizer (dpr/utils/tokenizers.py)
_DPR_TOKEN = regex.compile(r"([\p{L}\p{N}\p{M}]+)|([^\p{Z}\p{C}])",
                           flags=regex.IGNORECASE | regex.UNICODE | regex.MULTILINE)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def dpr_tokens(text: str) -> tuple[str, ...]:
    """DPR's tokens of ``text``: NFD-normalised, tokenised as DrQA's SimpleTokenizer, lower-cased."""
    return tuple(m.group().lower() for m in _DPR_TOKEN.finditer(unicodedata.normalize("NFD", text)))


def squad_tokens(text: str) -> tuple[str, ...]:
    """SQuAD's normalize_answer, split: lower-case, no punctuation, no articles, whitespace-split."""
    return tuple(_ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split())


MATCHES: dict[str, Callable[[str], tuple[str, ...]]] = {"string": dpr_tokens, "squad": squad_tokens}


def _contains(tokens: Sequence[str], part: tuple[str, ...]) -> bool:
    n = len(part)
    if not n or n > len(tokens):
        return False
    first = part[0]
    return any(tokens[i] == first and tuple(tokens[i:i + n]) == part for i in range(len(tokens) - n + 1))


def has_answer(answers: Iterable[str], text: str, match: str = "string") -> bool:
    """Whether the token sequence of one of ``answers`` occurs in that of the passage ``text``."""
    tokenize = MATCHES[match]
    tokens = tokenize(text)
    return any(_contains(tokens, tokenize(a)) for a in answers)


def answer_hits(run: pd.DataFrame, passages: Mapping[str, str], answers: Mapping[str, Sequence[str]],
                match: str = "string") -> np.ndarray:
    """For each row of ``run`` (query_id, doc_id), whether passage ``doc_id`` holds an answer of the query."""
    if match not in MATCHES:
        raise ValueError(f"unknown answer match {match!r} (expected one of {', '.join(MATCHES)})")
    tokenize = MATCHES[match]
    answer_tokens = {q: [tokenize(a) for a in answers.get(q, ())] for q in run["query_id"].unique()}
    passage_tokens: dict[str, tuple[str, ...]] = {}
    hits = np.zeros(len(run), dtype=bool)
    for i, (q, d) in enumerate(run[["query_id", "doc_id"]].itertuples(index=False)):
        if d not in passage_tokens:
            passage_tokens[d] = tokenize(passages[d])
        hits[i] = any(_contains(passage_tokens[d], a) for a in answer_tokens[q])
    return hits


def recall_at(run: pd.DataFrame, hits: np.ndarray, query_ids: Iterable[str], ks: Sequence[int]) -> dict[int, float]:
    """Recall@k for each k: the fraction of ``query_ids`` with an answer-bearing passage (``hits``,
    aligned with ``run``'s rows) at rank k or better; a query missing from ``run`` counts as 0."""
    query_ids = list(dict.fromkeys(query_ids))
    if not query_ids:
        raise ValueError("no questions to score")
    best = run.loc[np.asarray(hits, dtype=bool)].groupby("query_id")["rank"].min()
    best = best.reindex(query_ids)  # NaN: no answer anywhere in the run
    return {int(k): float((best <= k).sum() / len(query_ids)) for k in ks}


def metrics(run: pd.DataFrame, hits: np.ndarray, query_ids: Iterable[str], ks: Sequence[int], *, system: str,
            iteration: int | None, eval_set: str) -> pd.DataFrame:
    """Recall@k of each k in the long ``metrics`` schema (measure ``Recall@k``)."""
    values = recall_at(run, hits, query_ids, ks)
    frame = pd.DataFrame({"system": system, "iteration": iteration, "eval_set": eval_set,
                          "measure": [f"Recall@{k}" for k in values], "value": list(values.values())})
    return io.to_table(frame.astype({"iteration": "Int32"}), "metrics").to_pandas()


def qa_metrics(run: pd.DataFrame, corpus_path, answers_path, query_ids: Iterable[str], ks: Sequence[int], *,
               match: str, system: str, iteration: int | None, eval_set: str) -> pd.DataFrame:
    """Recall@k of a run over a QA set from the artifacts: the retrieved passages' texts (not their
    titles, as in DPR; read from the corpus row group by row group) matched against the answer
    strings of the ``answers`` artifact."""
    rows = io.read_rows(corpus_path, "corpus", "doc_id", run["doc_id"].unique(), columns=["doc_id", "text"])
    passages = dict(rows[["doc_id", "text"]].itertuples(index=False))
    answers = io.read_table(answers_path, "answers").groupby("query_id", sort=False)["answer"].apply(list).to_dict()
    hits = answer_hits(run, passages, answers, match)
    return metrics(run, hits, query_ids, ks, system=system, iteration=iteration, eval_set=eval_set)
