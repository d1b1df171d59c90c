"""Load and validate MS MARCO passage-ranking files (TSV) and write them as the prepare artifacts.

Reached through :func:`pairdistill.data.prepare` with ``format="msmarco"``. The inputs:

- the collection, ``pid<TAB>passage`` (8.8M lines in the real ``collection.tsv``);
- per split a queries file, ``qid<TAB>text`` (``queries.train.tsv``, ``queries.dev.small.tsv``,
  ``msmarco-test2019-queries.tsv``, ...): ALL its queries form the split, labelled or not, since
  distillation uses the ~800K training queries of which only ~500K are labelled;
- per split an optional qrels file, MS MARCO ``qid<TAB>0<TAB>pid<TAB>rel`` or TREC
  ``qid Q0 pid rel`` (``2019qrels-pass.txt``, graded 0-3): both are four whitespace-separated
  fields, so each line is read the same way.

The collection is streamed: written to the corpus Parquet in row groups of ``batch_rows`` and
checked for duplicate ids through 64-bit hashes, so memory is one batch plus 8 bytes a passage
instead of millions of Python strings. Queries and qrels (under a million lines) are read whole,
and read first, so the collection pass can also find the passages the qrels name. Checks and
messages follow the BEIR loader: an InputError names file and line, unknown ids are errors,
empty passages are skipped with a warning and their judgements dropped, and nothing is written
unless every input passes.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pairdistill import io
from pairdistill.loaders.common import (DATA_DIR_HINT, batches, check_streamed_ids, collect_queries, id_hashes, is_int,
                                        numbered_lines, qrels_frame, remember_judgement, require, split_list)
from pairdistill.errors import InputError

FILE_KEYS = ("collection", "queries", "qrels")


def resolve_files(
    data_dir: Path, dataset: str, files: dict | None, splits: list[str]
) -> tuple[Path, dict[str, Path], dict[str, Path]]:
    """The collection and the requested splits' queries and qrels paths from the ``files`` config.

    ``files`` is ``{"collection": path, "queries": {split: path}, "qrels": {split: path}}``; a
    relative path is relative to ``data_dir/dataset``. Every requested split needs a queries file;
    a qrels file is optional (an unlabelled split). Config mistakes raise ValueError naming the key.
    """
    if not isinstance(files, dict) or not files:
        raise ValueError("format 'msmarco' needs `files`: {collection: ..., queries: {split: ...}, "
                         "qrels: {split: ...}}")
    unknown = sorted(set(files) - set(FILE_KEYS))
    if unknown:
        raise ValueError(f"unknown key(s) in `files`: {', '.join(unknown)} (expected: {', '.join(FILE_KEYS)})")
    if not isinstance(files.get("collection"), (str, Path)) or not str(files["collection"]):
        raise ValueError("`files.collection` must name the collection file (pid<TAB>passage)")
    by_split = {}
    for key in ("queries", "qrels"):
        value = files.get(key) or {}
        if not isinstance(value, dict):
            raise ValueError(f"`files.{key}` must map split names to file paths")
        bad = sorted(s for s, p in value.items() if not isinstance(p, (str, Path)) or not str(p))
        if bad:
            raise ValueError(f"`files.{key}.{bad[0]}` must be a file path")
        by_split[key] = value
    orphans = sorted(set(by_split["qrels"]) - set(by_split["queries"]))
    if orphans:
        raise ValueError(f"`files.qrels.{orphans[0]}` has no queries file: set `files.queries.{orphans[0]}`")
    for split in splits:
        if split not in by_split["queries"]:
            raise ValueError(f"split {split!r} has no queries file: set `files.queries.{split}`")
    root = data_dir / dataset
    return (root / files["collection"],
            {s: root / by_split["queries"][s] for s in splits},
            {s: root / by_split["qrels"][s] for s in splits if s in by_split["qrels"]})


def _tsv_records(path: Path, what: str) -> Iterator[tuple[int, str, str]]:
    """Yield ``(line_number, id, rest)`` of an ``id<TAB>text`` file, split on the first tab only.

    Empty lines are skipped. An id must be one whitespace-free token: qrels are split on
    whitespace, so an id with a space (or a stray leading one) could never be judged.
    """
    for number, line in numbered_lines(path):
        if not line:
            continue
        record_id, tab, rest = line.partition("\t")
        if not tab:
            raise InputError(path, f"no tab between {what} id and text (expected `id<TAB>text`)", number)
        if not record_id.strip():
            raise InputError(path, f"empty {what} id", number)
        if record_id.split() != [record_id]:
            raise InputError(path, f"{what} id {record_id!r} contains whitespace", number)
        yield number, record_id, rest


def read_queries(path: str | Path) -> pd.DataFrame:
    """Read a ``qid<TAB>text`` queries file into (query_id, text), in file order."""
    path = Path(path)
    return collect_queries(path, _tsv_records(path, "query"))


def read_qrels(path: str | Path, split: str, query_ids: set[str], queries_path: Path) -> pd.DataFrame:
    """Read MS MARCO or TREC qrels into (split, query_id, doc_id, relevance, line).

    Every query must be in ``query_ids`` (the split's queries file, ``queries_path``); the
    documents are checked against the collection later, hence the ``line`` column for messages.
    """
    path = Path(path)
    seen: dict[tuple[str, str], int] = {}
    queries, docs, relevances, numbers = [], [], [], []
    for number, line in numbered_lines(path):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 4:
            raise InputError(path, f"expected 4 fields (MS MARCO `qid 0 pid rel` or TREC `qid Q0 pid rel`), "
                                   f"got {len(fields)}", number)
        query_id, _, doc_id, score = fields
        if not is_int(score):
            raise InputError(path, f"relevance {score!r} is not an integer", number)
        if query_id not in query_ids:
            raise InputError(path, f"unknown query id {query_id!r} (not in {queries_path.name})", number)
        remember_judgement(path, seen, query_id, doc_id, number)
        queries.append(query_id)
        docs.append(doc_id)
        relevances.append(int(score))
        numbers.append(number)
    return qrels_frame(path, split, queries, docs, relevances, line=pd.Series(numbers, dtype="int64"))


def write_collection(
    path: Path, out: Path, batch_rows: int, wanted: set[str]
) -> tuple[int, set[str], set[str]]:
    """Stream the collection to the corpus Parquet ``out``, one row group per ``batch_rows`` lines.

    Returns (passages written, ids of the passages skipped as empty, the ``wanted`` ids found).
    ``out`` is left half-written on error: the caller writes it under :func:`io.atomic_path`.
    """
    schema = io.SCHEMAS["corpus"]
    hashes: list[np.ndarray] = []
    skipped: list[str] = []
    found: set[str] = set()
    documents = 0
    with pq.ParquetWriter(out, schema) as writer:
        for batch in batches(_tsv_records(path, "passage"), batch_rows):
            ids, texts = [], []
            for number, doc_id, passage in batch:
                if not passage.strip():
                    skipped.append(doc_id)
                    warnings.warn(f"{path}:{number}: skipping passage {doc_id!r}: text is empty", stacklevel=2)
                    continue
                ids.append(doc_id)
                texts.append(passage)
            if not ids:
                continue
            columns = [pa.array(ids, pa.string()), pa.repeat(pa.scalar("", pa.string()), len(ids)),
                       pa.array(texts, pa.string())]
            writer.write_table(pa.Table.from_arrays(columns, schema=schema), row_group_size=batch_rows)
            hashes.append(id_hashes(ids))
            found.update(wanted.intersection(ids))
            documents += len(ids)
    # skipped passages keep their ids: a later passage reusing one is still a duplicate
    hashes.append(id_hashes(skipped))
    check_streamed_ids(path, hashes, lambda: _tsv_records(path, "passage"), batch_rows)
    if not documents:
        raise InputError(path, "collection holds no passages")
    return documents, set(skipped), found


def prepare(
    data_dir: str | Path,
    dataset: str,
    splits: str | Iterable[str],
    out_corpus: str | Path,
    out_queries: str | Path,
    out_qrels: str | Path,
    *,
    files: dict | None,
    batch_rows: int = 100_000,
) -> dict:
    """Validate the MS MARCO files named in ``files``, then write the three artifacts; returns stats.

    Queries: one row per (split, query) of the split's whole queries file, splits in the order
    requested, then by query_id. Qrels: the splits' files concatenated in that order, file order
    within. Stats per split: queries, labelled (queries with a judgement), qrels rows and
    judgements dropped because their passage was skipped as empty.
    """
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be positive, got {batch_rows}")
    data_dir = Path(data_dir)
    splits = split_list(splits)
    if not data_dir.is_dir():
        raise InputError(data_dir, f"data directory {str(data_dir)!r} does not exist; {DATA_DIR_HINT}")
    collection, queries_paths, qrels_paths = resolve_files(data_dir, dataset, files, splits)
    require(collection, "collection file (`files.collection`)")
    for key, paths in (("queries", queries_paths), ("qrels", qrels_paths)):
        for split, path in paths.items():
            require(path, f"{key} file of split {split!r} (`files.{key}.{split}`)")

    queries = {split: read_queries(path) for split, path in queries_paths.items()}
    qrels = {split: read_qrels(path, split, set(queries[split]["query_id"]), queries_paths[split])
             for split, path in qrels_paths.items()}
    wanted = set().union(*(set(frame["doc_id"]) for frame in qrels.values()))

    with io.atomic_path(out_corpus) as tmp_corpus, io.atomic_path(out_queries) as tmp_queries, \
            io.atomic_path(out_qrels) as tmp_qrels:
        documents, skipped, found = write_collection(collection, tmp_corpus, batch_rows, wanted)
        # skipped passages count as known, so their judgements are dropped, not reported as unknown
        known, dropped = found | skipped, {}
        for split, frame in qrels.items():
            unknown = ~frame["doc_id"].isin(known)
            if unknown.any():
                row = frame[unknown].iloc[0]
                raise InputError(qrels_paths[split], f"unknown document id {row['doc_id']!r} "
                                                     f"(not in {collection.name})", int(row["line"]))
            empty = frame["doc_id"].isin(skipped)
            dropped[split] = int(empty.sum())
            if dropped[split]:
                pairs = ", ".join(f"{q}/{d}" for q, d in frame.loc[empty, ["query_id", "doc_id"]].values)
                warnings.warn(f"{qrels_paths[split]}: dropping {dropped[split]} judgement(s) of passages "
                              f"skipped as empty (query/doc: {pairs})", stacklevel=2)
            qrels[split] = frame[~empty].drop(columns="line").reset_index(drop=True)
        queries_frame = pd.concat([
            queries[split].sort_values("query_id", kind="stable").assign(split=split)[["split", "query_id", "text"]]
            for split in splits
        ], ignore_index=True)
        all_qrels = (pd.concat([qrels[s] for s in splits if s in qrels], ignore_index=True) if qrels
                     else pd.DataFrame({c: pd.Series(dtype=object) for c in io.SCHEMAS["qrels"].names}))
        pq.write_table(io.to_table(queries_frame, "queries"), tmp_queries, row_group_size=io.ROW_GROUP_ROWS)
        pq.write_table(io.to_table(all_qrels, "qrels"), tmp_qrels, row_group_size=io.ROW_GROUP_ROWS)

    return {
        "documents": documents,
        "skipped_empty": len(skipped),
        "queries": {s: len(queries[s]) for s in splits},
        "labelled": {s: int(qrels[s]["query_id"].nunique()) if s in qrels else 0 for s in splits},
        "qrels": {s: len(qrels[s]) if s in qrels else 0 for s in splits},
        "qrels_dropped_empty": {s: dropped.get(s, 0) for s in splits},
    }
