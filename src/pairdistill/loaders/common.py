"""What every loader shares: reading numbered lines, the checks on ids and files, the frames.

Each reader reports bad input as an :class:`~pairdistill.errors.InputError` naming the file and
the 1-based line, so every format's messages read alike.
"""

from __future__ import annotations

import json
from itertools import islice
from pathlib import Path
from collections import defaultdict
from typing import Callable, Iterable, Iterator

import numpy as np
import pandas as pd

from pairdistill.errors import InputError

DATA_DIR_HINT = "set the `data_dir` config key or the PAIRDISTILL_DATA_DIR environment variable"


def numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` with line ends and a leading BOM removed.

    Lines are split on ``\\n`` only (read as bytes): text mode would also break on a lone ``\\r``
    or U+2028, which mis-encoded passages (MS MARCO) can contain, and shift every line number.
    """
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(path, f"not valid UTF-8 ({exc.reason} at byte {exc.start})", number) from None
            if number == 1:
                line = line.removeprefix("\ufeff")
            yield number, line.rstrip("\r\n")


def json_lines(path: Path) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for each non-blank line of a JSON-lines file."""
    for number, line in numbered_lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(path, f"line is not valid JSON ({exc.msg} at column {exc.colno})", number) from None
        if not isinstance(obj, dict):
            raise InputError(path, f"line is JSON but not an object (got {type(obj).__name__})", number)
        yield number, obj


def check_unique(path: Path, seen: dict[str, int], key: str, number: int, what: str) -> None:
    first = seen.get(key)
    if first is not None:
        raise InputError(path, f"duplicate {what} id {key!r} (first seen on line {first})", number)
    seen[key] = number


def is_int(value: str) -> bool:
    try:
        int(value)
    except ValueError:
        return False
    return True


def require(path: Path, what: str, is_dir: bool = False) -> None:
    ok = path.is_dir() if is_dir else path.is_file()
    if not ok:
        raise InputError(path, f"{what} does not exist")


def split_list(splits: str | Iterable[str]) -> list[str]:
    result = [splits] if isinstance(splits, str) else list(splits)
    if not result:
        raise ValueError("no splits requested")
    # a split listed twice would write its queries and qrels twice
    repeated = sorted({s for s in result if result.count(s) > 1})
    if repeated:
        raise ValueError(f"split(s) requested more than once: {', '.join(repeated)}")
    return result


def collect_queries(path: Path, records: Iterable[tuple[int, str, str]]) -> pd.DataFrame:
    """(query_id, text) from ``(line, query id, text)`` records; an empty text or a repeated id is an error."""
    seen: dict[str, int] = {}
    ids, texts = [], []
    for number, query_id, text in records:
        if not text.strip():
            raise InputError(path, f"query {query_id!r} has empty text", number)
        check_unique(path, seen, query_id, number, "query")
        ids.append(query_id)
        texts.append(text)
    if not ids:
        raise InputError(path, "queries file holds no queries")
    return pd.DataFrame({"query_id": ids, "text": texts}, dtype=object)


def remember_judgement(path: Path, seen: dict, query_id: str, doc_id: str, number: int) -> None:
    """Record a (query, document) judgement; a second one for the pair is an error naming both lines."""
    first = seen.get((query_id, doc_id))
    if first is not None:
        raise InputError(
            path, f"duplicate judgement for query {query_id!r} and document {doc_id!r} "
                  f"(first on line {first})", number)
    seen[(query_id, doc_id)] = number


def qrels_frame(path: Path, split: str, queries: list, docs: list, relevances: list, **extra) -> pd.DataFrame:
    """The parsed judgements of one qrels file as a frame (``extra``: more columns, e.g. line numbers)."""
    if not queries:
        raise InputError(path, "qrels file holds no judgements")
    return pd.DataFrame({
        "split": pd.Series([split] * len(queries), dtype=object),
        "query_id": pd.Series(queries, dtype=object),
        "doc_id": pd.Series(docs, dtype=object),
        "relevance": pd.Series(relevances, dtype="int32"),
        **extra,
    })


def batches(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def id_hashes(ids: list[str]) -> np.ndarray:
    """64-bit hashes of ids (pandas' SipHash with its fixed key: the same in every run)."""
    return pd.util.hash_array(np.asarray(ids, dtype=object), categorize=False)



def check_streamed_ids(path: Path, hashes: list[np.ndarray], records: Callable[[], Iterable[tuple]],
                       batch_rows: int, what: str = "passage") -> None:
    """Raise for the earliest repeated id of a file streamed in batches, from the ids' ``hashes``.

    ``hashes`` (one array a batch, consumed) are :func:`id_hashes` of every id read, so memory is 8
    bytes an id. Only when two hashes are equal (rare) is the file read again, through
    ``records()`` (``(line, id, ...)`` tuples), for the ids behind them: ids that merely collide pass,
    a true repeat is an error naming both lines.
    """
    ordered = np.concatenate(hashes) if hashes else np.empty(0, dtype=np.uint64)
    hashes.clear()
    ordered.sort()
    repeated = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
    if not repeated.size:
        return
    lines: dict[str, list[int]] = defaultdict(list)
    for batch in batches(records(), batch_rows):
        for i in np.flatnonzero(np.isin(id_hashes([record[1] for record in batch]), repeated)):
            lines[batch[i][1]].append(batch[i][0])
    repeats = [(numbers[1], numbers[0], record_id) for record_id, numbers in lines.items() if len(numbers) > 1]
    if repeats:
        second, first, record_id = min(repeats)
        raise InputError(path, f"duplicate {what} id {record_id!r} (first seen on line {first})", second)
