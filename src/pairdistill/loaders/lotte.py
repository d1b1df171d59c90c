"""LoTTE (Santhanam et al., 2022): one topic of the release as corpus, queries and qrels artifacts.

The release's layout, per topic (writing, recreation, science, technology, lifestyle, pooled) and
split (dev, test):

- ``<root>/<topic>/<split>/collection.tsv``: ``pid<TAB>passage``;
- ``questions.<set>.tsv``: ``qid<TAB>question``, for each query set (``search``, ``forum``);
- ``qas.<set>.jsonl``: one JSON object a line, ``{"qid": .., "query": .., "answer_pids": [..]}``.

``pooled`` is the release's own folder (the five collections concatenated, pids made distinct),
read as one more topic. Each query set becomes a split of the queries artifact (qids restart at 0
in each set, so a query is known by (split, query_id)), and its answer passages become qrels of
relevance 1: LoTTE's Success@5 is then ir-measures' ``Success@5`` over those qrels, the fraction of
questions with an answer passage in the top 5. The collection is streamed as MS MARCO's is
(:func:`pairdistill.loaders.msmarco.write_collection`).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Iterable

import pandas as pd
import pyarrow.parquet as pq

from pairdistill import io
from pairdistill.loaders import msmarco
from pairdistill.loaders.common import json_lines, qrels_frame, require
from pairdistill.errors import InputError

QUERY_SETS = ("search", "forum")


def topic_files(root: str | Path, topic: str, split: str,
                query_sets: Iterable[str]) -> tuple[Path, dict[str, Path], dict[str, Path]]:
    """The collection, and each query set's questions and qas files, of ``root/topic/split``."""
    base = Path(root) / topic / split
    query_sets = _query_sets(query_sets)
    return (base / "collection.tsv", {s: base / f"questions.{s}.tsv" for s in query_sets},
            {s: base / f"qas.{s}.jsonl" for s in query_sets})


def input_files(root: str | Path, topic: str, split: str, query_sets: Iterable[str]) -> list[str]:
    """Every file :func:`prepare` reads for this topic, so a Snakemake rule can declare them."""
    collection, questions, qas = topic_files(root, topic, split, query_sets)
    return [str(p) for p in (collection, *questions.values(), *qas.values())]


def _query_sets(query_sets: Iterable[str]) -> list[str]:
    query_sets = [query_sets] if isinstance(query_sets, str) else list(query_sets)
    unknown = [s for s in query_sets if s not in QUERY_SETS]
    if unknown or not query_sets or len(set(query_sets)) != len(query_sets):
        raise ValueError(f"LoTTE query sets must be distinct ones of {', '.join(QUERY_SETS)}, got {query_sets}")
    return query_sets


def _id(path: Path, value, number: int, what: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip():
        raise InputError(path, f"{what} must be a non-empty string or an integer, got {json.dumps(value)}", number)
    return str(value)


def read_qas(path: str | Path, split: str, query_ids: set[str], questions_path: Path) -> pd.DataFrame:
    """The answer passages of a ``qas.<set>.jsonl`` as qrels (relevance 1), with a ``line`` column.

    Every ``qid`` must be in ``query_ids`` (the set's questions file, ``questions_path``) and have a
    non-empty ``answer_pids`` list; the pids are checked against the collection later.
    """
    path = Path(path)
    seen: dict[str, int] = {}
    queries, docs, numbers = [], [], []
    for number, obj in json_lines(path):
        for key in ("qid", "answer_pids"):
            if key not in obj:
                raise InputError(path, f"missing `{key}` field", number)
        query_id = _id(path, obj["qid"], number, "`qid`")
        if query_id not in query_ids:
            raise InputError(path, f"unknown qid {query_id!r} (not in {questions_path.name})", number)
        if query_id in seen:
            raise InputError(path, f"duplicate qid {query_id!r} (first seen on line {seen[query_id]})", number)
        seen[query_id] = number
        pids = obj["answer_pids"]
        if not isinstance(pids, list):
            raise InputError(path, f"`answer_pids` must be a list of passage ids, got {json.dumps(pids)}", number)
        if not pids:
            raise InputError(path, f"`answer_pids` of qid {query_id!r} is empty: the question cannot be scored",
                             number)
        # a pid listed twice is one answer passage
        for doc_id in dict.fromkeys(_id(path, p, number, "an answer pid") for p in pids):
            queries.append(query_id)
            docs.append(doc_id)
            numbers.append(number)
    return qrels_frame(path, split, queries, docs, [1] * len(queries), line=pd.Series(numbers, dtype="int64"))


def prepare(root: str | Path, topic: str, split: str, query_sets: Iterable[str], out_corpus: str | Path,
            out_queries: str | Path, out_qrels: str | Path, *, batch_rows: int = 100_000) -> dict:
    """Validate one LoTTE topic, then write the corpus, queries and qrels artifacts; returns stats.

    Queries: one row per (query set, question) of each set's questions file, sets in the order
    given, then by qid. Qrels: each set's answer passages (relevance 1) in qas file order.
    Stats per set: questions, answered (questions with a qas line), answer passages.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "LoTTE root directory does not exist (config key: lotte_eval.root)")
    require(root / topic, f"LoTTE topic folder {topic!r}", is_dir=True)
    require(root / topic / split, f"LoTTE split folder {topic}/{split}", is_dir=True)
    collection, questions_paths, qas_paths = topic_files(root, topic, split, query_sets)
    for path in (collection, *questions_paths.values(), *qas_paths.values()):
        require(path, f"LoTTE file {path.name} of {topic}/{split}")

    questions = {s: msmarco.read_queries(p) for s, p in questions_paths.items()}
    answers = {s: read_qas(p, s, set(questions[s]["query_id"]), questions_paths[s]) for s, p in qas_paths.items()}
    wanted = set().union(*(set(frame["doc_id"]) for frame in answers.values()))

    with io.atomic_path(out_corpus) as tmp_corpus, io.atomic_path(out_queries) as tmp_queries, \
            io.atomic_path(out_qrels) as tmp_qrels:
        documents, skipped, found = msmarco.write_collection(collection, tmp_corpus, batch_rows, wanted)
        for query_set, frame in answers.items():
            unknown = ~frame["doc_id"].isin(found | skipped)
            if unknown.any():
                row = frame[unknown].iloc[0]
                raise InputError(qas_paths[query_set], f"unknown answer pid {row['doc_id']!r} "
                                                       f"(not in {collection.name})", int(row["line"]))
            empty = frame["doc_id"].isin(skipped)
            if empty.any():
                warnings.warn(f"{qas_paths[query_set]}: dropping {int(empty.sum())} answer passage(s) skipped "
                              "as empty", stacklevel=2)
            answers[query_set] = frame[~empty].drop(columns="line").reset_index(drop=True)
        queries = pd.concat([
            questions[s].sort_values("query_id", kind="stable").assign(split=s)[["split", "query_id", "text"]]
            for s in questions], ignore_index=True)
        qrels = pd.concat(list(answers.values()), ignore_index=True)
        pq.write_table(io.to_table(queries, "queries"), tmp_queries, row_group_size=io.ROW_GROUP_ROWS)
        pq.write_table(io.to_table(qrels, "qrels"), tmp_qrels, row_group_size=io.ROW_GROUP_ROWS)

    return {
        "topic": topic,
        "split": split,
        "documents": documents,
        "skipped_empty": len(skipped),
        "questions": {s: len(q) for s, q in questions.items()},
        "answered": {s: int(a["query_id"].nunique()) for s, a in answers.items()},
        "answer_passages": {s: len(a) for s, a in answers.items()},
    }
