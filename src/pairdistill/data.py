"""The ``prepare`` stage: one entry point for every training format, writing the three artifacts.

The formats' readers live in :mod:`pairdistill.loaders`: the BEIR layout in
:mod:`~pairdistill.loaders.beir`, MS MARCO's passage-ranking TSV files in
:mod:`~pairdistill.loaders.msmarco`. Every check raises :class:`~pairdistill.errors.InputError`
naming the file, the 1-based line and the problem, and all inputs are validated before anything is
written, so a bad collection stops the pipeline at ``prepare`` instead of surfacing later as a
silently wrong score. :func:`passage_text` is the text every model sees for a document.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from pairdistill import io
from pairdistill import query_splits as derived
from pairdistill.loaders import msmarco
from pairdistill.loaders.beir import beir_paths, load_beir
from pairdistill.loaders.common import split_list


def passage_text(title: str, text: str) -> str:
    """The text every model sees for a document: ``"title text"`` joined by one space.

    A plain space (not ". ") keeps titles that already end in punctuation intact and matches the
    BEIR/ColBERT convention; an empty title gives just the text.
    """
    return " ".join(part for part in (title.strip(), text.strip()) if part)


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
    splits = split_list(splits)
    if format == "msmarco":
        collection, queries, qrels = msmarco.resolve_files(Path(data_dir), dataset, files, splits)
        return [str(p) for p in (collection, *queries.values(), *qrels.values())]
    corpus, queries, qrels = beir_paths(Path(data_dir), dataset, splits)
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
    to the corpus artifact in row groups of ``batch_rows`` (see :func:`pairdistill.loaders.msmarco.prepare`).
    Stats: documents, skipped_empty, and per split queries, labelled, qrels, qrels_dropped_empty.

    ``query_splits`` (config ``query_splits``, :mod:`pairdistill.query_splits`): derived splits,
    partitions of a collection's split seeded by ``seed``; ``splits`` may name them. Their sources
    are read, cut, and left out of the artifacts unless requested themselves (``stats["derived"]``).
    """
    _check_format(format, files)
    spec = derived.check(query_splits)
    requested = split_list(splits)
    loaded = derived.loaded_splits(requested, spec) if spec else requested
    if format == "msmarco":
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

