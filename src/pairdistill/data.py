"""Load and validate BEIR-layout collections (corpus, queries, qrels) and write them as artifacts.

:func:`prepare` is the single entry point for every input format; MS MARCO's passage-ranking TSV
files are read by :mod:`pairdistill.msmarco`, which builds on the line reader and checks here.

Every check raises :class:`~pairdistill.errors.InputError` naming the file, the 1-based line and the
problem, and all inputs are validated before anything is returned or written, so a bad collection
stops the pipeline at ``prepare`` instead of surfacing later as a silently wrong score.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Iterable, Iterator

import pandas as pd

from pairdistill import io
from pairdistill.errors import InputError

DATA_DIR_HINT = "set the `data_dir` config key or the PAIRDISTILL_DATA_DIR environment variable"


def _lines(path: Path) -> Iterator[tuple[int, str]]:
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


def _json_objects(path: Path) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for each non-blank line of a JSON-lines file."""
    for number, line in _lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(path, f"line is not valid JSON ({exc.msg} at column {exc.colno})", number) from None
        if not isinstance(obj, dict):
            raise InputError(path, f"line is JSON but not an object (got {type(obj).__name__})", number)
        yield number, obj


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


def _check_unique(path: Path, seen: dict[str, int], key: str, number: int, what: str) -> None:
    first = seen.get(key)
    if first is not None:
        raise InputError(path, f"duplicate {what} id {key!r} (first seen on line {first})", number)
    seen[key] = number


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
    for number, obj in _json_objects(path):
        doc_id = _record_id(path, obj, number)
        title = _string_field(path, obj, "title", number, required=False)
        text = _string_field(path, obj, "text", number, required=True)
        _check_unique(path, seen, doc_id, number, "document")
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
               for number, obj in _json_objects(path))
    return collect_queries(path, records)


def collect_queries(path: Path, records: Iterable[tuple[int, str, str]]) -> pd.DataFrame:
    """(query_id, text) from ``(line, query id, text)`` records; an empty text or a repeated id is an error."""
    seen: dict[str, int] = {}
    ids, texts = [], []
    for number, query_id, text in records:
        if not text.strip():
            raise InputError(path, f"query {query_id!r} has empty text", number)
        _check_unique(path, seen, query_id, number, "query")
        ids.append(query_id)
        texts.append(text)
    if not ids:
        raise InputError(path, "queries file holds no queries")
    return pd.DataFrame({"query_id": ids, "text": texts}, dtype=object)


def _is_int(value: str) -> bool:
    try:
        int(value)
    except ValueError:
        return False
    return True


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
    for number, line in _lines(path):
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
        if not _is_int(score):
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


def passage_text(title: str, text: str) -> str:
    """The text every model sees for a document: ``"title text"`` joined by one space.

    A plain space (not ". ") keeps titles that already end in punctuation intact and matches the
    BEIR/ColBERT convention; an empty title gives just the text.
    """
    return " ".join(part for part in (title.strip(), text.strip()) if part)


def _require(path: Path, what: str, is_dir: bool = False) -> None:
    ok = path.is_dir() if is_dir else path.is_file()
    if not ok:
        raise InputError(path, f"{what} does not exist")


def _split_list(splits: str | Iterable[str]) -> list[str]:
    result = [splits] if isinstance(splits, str) else list(splits)
    if not result:
        raise ValueError("no splits requested")
    # a split listed twice would write its queries and qrels twice
    repeated = sorted({s for s in result if result.count(s) > 1})
    if repeated:
        raise ValueError(f"split(s) requested more than once: {', '.join(repeated)}")
    return result


def _beir_paths(data_dir: Path, dataset: str, splits: list[str]) -> tuple[Path, Path, dict[str, Path]]:
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
    splits = _split_list(splits)
    if not data_dir.is_dir():
        raise InputError(data_dir, f"data directory {str(data_dir)!r} does not exist; {DATA_DIR_HINT}")
    root = data_dir / dataset
    _require(root, f"dataset folder {dataset!r}", is_dir=True)
    corpus_path, queries_path, qrels_paths = _beir_paths(data_dir, dataset, splits)
    _require(corpus_path, "corpus file")
    _require(queries_path, "queries file")
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


FORMATS = ("beir", "msmarco")


def _check_format(format: str, files: dict | None) -> None:
    if format not in FORMATS:
        raise ValueError(f"unknown dataset format {format!r} (expected one of: {', '.join(FORMATS)})")
    if format == "beir" and files:
        raise ValueError("`files` names MS MARCO input files; it is not used with format 'beir'")


def input_files(
    data_dir: str | Path, dataset: str, format: str, files: dict | None, splits: str | Iterable[str]
) -> list[str]:
    """The files :func:`prepare` reads for this configuration, so a Snakemake rule can declare them.

    Existence is not checked: a missing file is reported by :func:`prepare` with its context.
    """
    _check_format(format, files)
    splits = _split_list(splits)
    if format == "msmarco":
        from pairdistill import msmarco  # imported here: msmarco builds on this module

        collection, queries, qrels = msmarco.resolve_files(Path(data_dir), dataset, files, splits)
        return [str(p) for p in (collection, *queries.values(), *qrels.values())]
    corpus, queries, qrels = _beir_paths(Path(data_dir), dataset, splits)
    return [str(p) for p in (corpus, queries, *qrels.values())]


def prepare(
    data_dir: str | Path,
    dataset: str,
    splits: str | Iterable[str],
    out_corpus: str | Path,
    out_queries: str | Path,
    out_qrels: str | Path,
    *,
    format: str = "beir",
    files: dict | None = None,
    batch_rows: int = 100_000,
    query_splits: dict | None = None,
    seed: int = 0,
) -> dict:
    """Validate the collection, then write the corpus, queries and qrels artifacts; returns stats.

    ``format`` "beir" reads ``data_dir/dataset`` in BEIR layout (small enough to load whole);
    "msmarco" reads the passage-ranking TSV files named in ``files`` and streams the collection
    to the corpus artifact in row groups of ``batch_rows`` (see :func:`pairdistill.msmarco.prepare`).
    Stats: documents, skipped_empty, and per split queries, labelled, qrels, qrels_dropped_empty.

    ``query_splits`` (config ``query_splits``, :mod:`pairdistill.query_splits`): derived splits,
    partitions of a collection's split seeded by ``seed``; ``splits`` may name them. Their sources
    are read, cut, and left out of the artifacts unless requested themselves (``stats["derived"]``).
    """
    from pairdistill import query_splits as derived

    _check_format(format, files)
    spec = derived.check(query_splits)
    requested = _split_list(splits)
    loaded = derived.loaded_splits(requested, spec) if spec else requested
    if format == "msmarco":
        from pairdistill import msmarco  # imported here: msmarco builds on this module

        stats = msmarco.prepare(data_dir, dataset, loaded, out_corpus, out_queries, out_qrels,
                                files=files, batch_rows=batch_rows)
        if spec:  # the collection is streamed to disk; its queries and qrels are cut from the files
            queries, qrels, stats["derived"] = derived.derive(io.read_table(out_queries, "queries"),
                                                              io.read_table(out_qrels, "qrels"), requested, spec, seed)
            io.write_table(queries, "queries", out_queries)
            io.write_table(qrels, "qrels", out_qrels)
        return stats
    corpus, queries, qrels, stats = load_beir(data_dir, dataset, loaded)
    if spec:
        queries, qrels, stats["derived"] = derived.derive(queries, qrels, requested, spec, seed)
    # cast all three before writing any, so a schema mismatch cannot leave a partial set behind
    for frame, name in ((corpus, "corpus"), (queries, "queries"), (qrels, "qrels")):
        io.to_table(frame, name)
    io.write_table(corpus, "corpus", out_corpus)
    io.write_table(queries, "queries", out_queries)
    io.write_table(qrels, "qrels", out_qrels)
    return stats
