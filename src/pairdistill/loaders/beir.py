"""The BEIR layout: ``<dataset>/corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv``.

Read whole (BEIR's collections are small enough) and cross-checked: every judgement must name a
known query and document, ids are unique, and documents with neither title nor text are skipped
with a warning, their judgements dropped. Reached through :func:`pairdistill.data.prepare`.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Iterable

import pandas as pd

from pairdistill.errors import InputError
from pairdistill.loaders.common import (DATA_DIR_HINT, check_unique, collect_queries, is_int, json_lines, numbered_lines,
                                        qrels_frame, remember_judgement, require, split_list)


def _record_id(path: Path, obj: dict, number: int) -> str:
    if "_id" not in obj:
        raise InputError(path, "missing `_id` field", number)
    value = obj["_id"]
    # bool is an int subclass; `true` as an id is surely a mistake
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise InputError(path, f"`_id` must be a string or number, got {json.dumps(value)}", number)
    value = str(value)
    if not value.strip():
        raise InputError(path, "`_id` is empty", number)
    return value


def _string_field(path: Path, obj: dict, key: str, number: int, required: bool) -> str:
    if key not in obj or obj[key] is None:
        if required:
            raise InputError(path, f"missing `{key}` field", number)
        return ""
    value = obj[key]
    if not isinstance(value, str):
        raise InputError(path, f"`{key}` must be a string, got {type(value).__name__}", number)
    return value


def load_corpus(path: str | Path) -> tuple[pd.DataFrame, dict]:
    """Read ``corpus.jsonl`` into (doc_id, title, text); documents with no title and no text are skipped.

    Returns the frame and ``{"documents": kept, "skipped_empty": skipped}``.
    """
    frame, skipped = _read_corpus(Path(path))
    return frame, {"documents": len(frame), "skipped_empty": len(skipped)}


def _read_corpus(path: Path) -> tuple[pd.DataFrame, list[str]]:
    """The corpus frame and the ids of the documents skipped as empty."""
    seen: dict[str, int] = {}
    ids, titles, texts = [], [], []
    skipped: list[str] = []
    for number, obj in json_lines(path):
        doc_id = _record_id(path, obj, number)
        title = _string_field(path, obj, "title", number, required=False)
        text = _string_field(path, obj, "text", number, required=True)
        check_unique(path, seen, doc_id, number, "document")
        if not title.strip() and not text.strip():
            skipped.append(doc_id)
            message = f"{path}:{number}: skipping document {doc_id!r}: title and text are empty"
            warnings.warn(message, stacklevel=3)
            continue
        ids.append(doc_id)
        titles.append(title)
        texts.append(text)
    if not ids:
        raise InputError(path, "corpus holds no documents")
    frame = pd.DataFrame({"doc_id": ids, "title": titles, "text": texts}, dtype=object)
    return frame, skipped


def load_queries(path: str | Path) -> pd.DataFrame:
    """Read ``queries.jsonl`` into (query_id, text); an empty query text is an error."""
    path = Path(path)
    records = ((number, _record_id(path, obj, number), _string_field(path, obj, "text", number, required=True))
               for number, obj in json_lines(path))
    return collect_queries(path, records)


def load_qrels(
    path: str | Path,
    split: str,
    query_ids: Iterable[str] | None = None,
    doc_ids: Iterable[str] | None = None,
) -> pd.DataFrame:
    """Read a qrels file into (split, query_id, doc_id, relevance).

    Accepts tab- or whitespace-separated BEIR rows (query, doc, score) or TREC rows
    (query, iteration, doc, score), with or without a header, LF or CRLF. With ``query_ids`` /
    ``doc_ids`` given, every row must name a known query and document.
    """
    path = Path(path)
    known_queries = set(query_ids) if query_ids is not None else None
    known_docs = set(doc_ids) if doc_ids is not None else None
    n_columns: int | None = None
    seen: dict[tuple[str, str], int] = {}
    queries, docs, relevances = [], [], []
    first_content = True
    for number, line in numbered_lines(path):
        fields = line.split()
        if not fields:
            continue
        is_first, first_content = first_content, False
        if n_columns is None:
            if len(fields) not in (3, 4):
                raise InputError(
                    path, f"expected 3 columns (query doc score) or 4 (query iteration doc score), "
                          f"got {len(fields)}", number)
            n_columns = len(fields)
        elif len(fields) != n_columns:
            raise InputError(path, f"expected {n_columns} columns like the first row, got {len(fields)}", number)
        score = fields[-1]
        if not is_int(score):
            if is_first:  # a header row, e.g. BEIR's "query-id corpus-id score"
                continue
            raise InputError(path, f"relevance {score!r} is not an integer", number)
        query_id, doc_id = fields[0], fields[-2]
        if known_queries is not None and query_id not in known_queries:
            raise InputError(path, f"unknown query id {query_id!r} (not in queries)", number)
        if known_docs is not None and doc_id not in known_docs:
            raise InputError(path, f"unknown document id {doc_id!r} (not in corpus)", number)
        remember_judgement(path, seen, query_id, doc_id, number)
        queries.append(query_id)
        docs.append(doc_id)
        relevances.append(int(score))
    return qrels_frame(path, split, queries, docs, relevances)


def beir_paths(data_dir: Path, dataset: str, splits: list[str]) -> tuple[Path, Path, dict[str, Path]]:
    root = data_dir / dataset
    return root / "corpus.jsonl", root / "queries.jsonl", {s: root / "qrels" / f"{s}.tsv" for s in splits}


def load_beir(
    data_dir: str | Path, dataset: str, splits: str | Iterable[str]
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    """Load and cross-check ``data_dir/dataset`` for ``splits``.

    Returns (corpus, queries, qrels, stats). A split's queries are those judged in its qrels file
    (BEIR keeps one queries file for all splits): one row per (split, query), splits in the order
    requested, then by query_id; qrels are all splits concatenated in the order requested.
    Judgements of documents skipped as empty are dropped with a warning and counted in
    ``stats["qrels_dropped_empty"]`` (Cranfield judges its empty document 995).
    """
    data_dir = Path(data_dir)
    splits = split_list(splits)
    if not data_dir.is_dir():
        raise InputError(data_dir, f"data directory {str(data_dir)!r} does not exist; {DATA_DIR_HINT}")
    root = data_dir / dataset
    require(root, f"dataset folder {dataset!r}", is_dir=True)
    corpus_path, queries_path, qrels_paths = beir_paths(data_dir, dataset, splits)
    require(corpus_path, "corpus file")
    require(queries_path, "queries file")
    for split, path in qrels_paths.items():
        if not path.is_file():
            available = sorted(p.stem for p in (root / "qrels").glob("*.tsv"))
            raise InputError(path, f"qrels file for split {split!r} does not exist "
                                   f"(available splits: {', '.join(available) or 'none'})")

    corpus, skipped = _read_corpus(corpus_path)
    queries = load_queries(queries_path)
    # skipped documents count as known, so their judgements are dropped, not reported as unknown
    doc_ids, query_ids = set(corpus["doc_id"]) | set(skipped), set(queries["query_id"])
    qrels_by_split, dropped = {}, {}
    for split, path in qrels_paths.items():
        split_qrels = load_qrels(path, split, query_ids, doc_ids)
        empty = split_qrels["doc_id"].isin(skipped)
        dropped[split] = int(empty.sum())
        if dropped[split]:
            pairs = ", ".join(f"{q}/{d}" for q, d in split_qrels.loc[empty, ["query_id", "doc_id"]].values)
            message = (f"{path}: dropping {dropped[split]} judgement(s) of documents skipped as empty "
                       f"(query/doc: {pairs})")
            warnings.warn(message, stacklevel=2)
            split_qrels = split_qrels[~empty].reset_index(drop=True)
        qrels_by_split[split] = split_qrels
    qrels = pd.concat(list(qrels_by_split.values()), ignore_index=True)

    queries = pd.concat([
        queries[queries["query_id"].isin(set(split_qrels["query_id"]))]
        .sort_values("query_id", kind="stable")
        .assign(split=split)[["split", "query_id", "text"]]
        for split, split_qrels in qrels_by_split.items()
    ], ignore_index=True)
    judged = {s: int(q["query_id"].nunique()) for s, q in qrels_by_split.items()}
    stats = {
        "documents": len(corpus),
        "skipped_empty": len(skipped),
        "queries": judged,
        "labelled": dict(judged),  # every BEIR split query is labelled: that is how its split is known
        "qrels": {s: len(q) for s, q in qrels_by_split.items()},
        "qrels_dropped_empty": dropped,
    }
    return corpus, queries, qrels, stats

