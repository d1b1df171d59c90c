"""DPR's open-domain QA files (Karpukhin et al., 2020) as the pipeline's artifacts.

- Passages: DPR's ``psgs_w100.tsv``, a header line ``id<TAB>text<TAB>title``, then one passage a
  row in CSV quoting (a text holding quotes is written ``"... ""so"" ..."``). Read as DPR reads it,
  ``csv.reader(delimiter="\\t")``, and streamed into the corpus artifact (doc_id = id) in row groups,
  duplicate ids found through 64-bit hashes as in :mod:`pairdistill.loaders.msmarco` (21M passages).
- Questions: DPR's ``*.qa.csv`` (``nq-test.qa.csv``, ``trivia-test.qa.csv``, ``squad1-test.qa.csv``),
  no header, ``question<TAB>answers`` with the answers a Python or JSON list of strings
  (``["Daei", "Ali Daei"]``, ``['Sunset Boulevard']``), read with the same CSV reader. A question's id
  is its 0-based row number, as DPR numbers its results. The answers go to their own artifact
  (``answers``: query_id, answer), which the QA evaluation matches against retrieved passages
  (:mod:`pairdistill.answers`).
"""

from __future__ import annotations

import ast
import csv
import json
import sys
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pairdistill import io
from pairdistill.loaders.common import batches, check_streamed_ids, collect_queries, id_hashes, require
from pairdistill.errors import InputError

PASSAGES_HEADER = ["id", "text", "title"]

# a passage longer than csv's default field limit (128K characters) is still one passage
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


def _csv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(line_number, fields)`` of each non-blank row of a tab-separated CSV file; the line
    is where the row starts (a quoted field may span lines). A leading BOM is dropped."""
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t")
        start = 1
        try:
            for fields in reader:
                if fields:
                    yield start, fields
                start = reader.line_num + 1
        except UnicodeDecodeError as exc:
            raise InputError(path, f"not valid UTF-8 ({exc.reason})", reader.line_num + 1) from None
        except csv.Error as exc:
            raise InputError(path, f"not readable as tab-separated CSV ({exc})", start) from None


def _passage_records(path: Path) -> Iterator[tuple[int, str, str, str]]:
    """Yield ``(line_number, id, title, text)`` of each passage after the header line."""
    rows = _csv_rows(path)
    first = next(rows, None)
    if first is None:
        raise InputError(path, "passages file is empty")
    if first[1] != PASSAGES_HEADER:
        shown = "\t".join(first[1])[:80]
        raise InputError(path, f"expected the header line `id<TAB>text<TAB>title` (DPR's psgs_w100.tsv), "
                               f"got {shown!r}", first[0])
    for number, fields in rows:
        if len(fields) != 3:
            raise InputError(path, f"expected 3 fields (id, text, title), got {len(fields)}", number)
        doc_id, text, title = fields
        if not doc_id.strip():
            raise InputError(path, "empty passage id", number)
        if doc_id.split() != [doc_id]:
            raise InputError(path, f"passage id {doc_id!r} contains whitespace", number)
        yield number, doc_id, title, text


def write_passages(path: str | Path, out: str | Path, batch_rows: int = 100_000) -> dict:
    """Stream the passages file into the corpus artifact ``out`` (written atomically); returns stats.

    A passage with neither text nor title is skipped with a warning; a repeated id is an error
    naming both lines.
    """
    path = Path(path)
    require(path, "passages file")
    schema = io.SCHEMAS["corpus"]
    hashes: list[np.ndarray] = []
    skipped: list[str] = []
    documents = 0
    with io.atomic_path(out) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for batch in batches(_passage_records(path), batch_rows):
            rows = []
            for number, doc_id, title, text in batch:
                if not title.strip() and not text.strip():
                    skipped.append(doc_id)
                    warnings.warn(f"{path}:{number}: skipping passage {doc_id!r}: title and text are empty",
                                  stacklevel=2)
                else:
                    rows.append((doc_id, title, text))
            if rows:
                ids, titles, texts = map(list, zip(*rows))
                writer.write_table(pa.Table.from_arrays([pa.array(c, pa.string()) for c in (ids, titles, texts)],
                                                        schema=schema), row_group_size=batch_rows)
                hashes.append(id_hashes(ids))
                documents += len(ids)
        hashes.append(id_hashes(skipped))
        check_streamed_ids(path, hashes, lambda: _passage_records(path), batch_rows)
        if not documents:
            raise InputError(path, "passages file holds no passages")
    return {"documents": documents, "skipped_empty": len(skipped)}


def parse_answers(path: Path, raw: str, number: int) -> list[str]:
    """The answer strings of one question: a Python or JSON list of non-empty strings."""
    value = None
    for parse in (ast.literal_eval, json.loads):
        try:
            value = parse(raw)
            break
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
    else:
        raise InputError(path, f"answers {raw[:60]!r} are not a list literal (expected e.g. [\"Paris\"])", number)
    if not isinstance(value, list):
        raise InputError(path, f"answers must be a list of strings, got {type(value).__name__} {raw[:60]!r}", number)
    if not value:
        raise InputError(path, "answers list is empty: the question cannot be scored", number)
    for i, answer in enumerate(value, start=1):
        if not isinstance(answer, str):
            raise InputError(path, f"answer {i} is not a string (got {type(answer).__name__} {answer!r})", number)
        if not answer.strip():
            raise InputError(path, f"answer {i} is empty", number)
    return list(dict.fromkeys(value))


def read_questions(path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(query_id, text) and (query_id, answer) of a DPR ``*.qa.csv`` file; ids are 0-based row numbers."""
    path = Path(path)
    records, query_ids, answers = [], [], []
    for index, (number, fields) in enumerate(_csv_rows(path)):
        if len(fields) != 2:
            raise InputError(path, f"expected 2 fields (question, answers), got {len(fields)}", number)
        question, raw = fields
        query_id = str(index)
        records.append((number, query_id, question))
        for answer in parse_answers(path, raw, number):
            query_ids.append(query_id)
            answers.append(answer)
    queries = collect_queries(path, records)
    return queries, pd.DataFrame({"query_id": query_ids, "answer": answers}, dtype=object)


def prepare_questions(path: str | Path, name: str, out_queries: str | Path, out_answers: str | Path) -> dict:
    """Validate a questions file, then write its queries (split ``name``) and answers artifacts."""
    path = Path(path)
    require(path, "questions file")
    queries, answers = read_questions(path)
    queries = queries.assign(split=name)[["split", "query_id", "text"]]
    tables = io.to_table(queries, "queries"), io.to_table(answers, "answers")
    with io.atomic_path(out_queries) as tmp_queries, io.atomic_path(out_answers) as tmp_answers:
        pq.write_table(tables[0], tmp_queries, row_group_size=io.ROW_GROUP_ROWS)
        pq.write_table(tables[1], tmp_answers, row_group_size=io.ROW_GROUP_ROWS)
    return {"questions": len(queries), "answers": len(answers)}
