"""Typed Parquet artifacts and atomic writes.

Every artifact of the pipeline has a schema here; :func:`write_table` refuses a frame that does
not match it, and writes to a temporary name in the same directory before renaming, so a job
killed mid-write never leaves a file that Snakemake (or a reader) would take as complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

S, I32, I64, F32, F64 = pa.string(), pa.int32(), pa.int64(), pa.float32(), pa.float64()


def _schema(*fields: tuple[str, pa.DataType], nullable: tuple[str, ...] = ()) -> pa.Schema:
    return pa.schema([pa.field(n, t, nullable=n in nullable) for n, t in fields])


SCHEMAS: dict[str, pa.Schema] = {
    # prepare
    "corpus": _schema(("doc_id", S), ("title", S), ("text", S)),
    "queries": _schema(("query_id", S), ("text", S)),
    "qrels": _schema(("split", S), ("query_id", S), ("doc_id", S), ("relevance", I32)),
    # retrieve / evaluate: one row per (query, retrieved passage)
    "run": _schema(("query_id", S), ("doc_id", S), ("rank", I32), ("score", F32)),
    # pointwise: the retrieved list re-scored by the pointwise teacher; retriever columns are null
    # for labelled positives the retriever missed (added so every training group has one)
    "pointwise": _schema(
        ("query_id", S), ("doc_id", S), ("retriever_rank", I32), ("retriever_score", F32),
        ("teacher_score", F32), ("teacher_rank", I32),
        nullable=("retriever_rank", "retriever_score"),
    ),
    # pairs: sampled on the pointwise-reranked list (ranks are teacher ranks, 1-based)
    "pairs": _schema(
        ("query_id", S), ("doc_a", S), ("doc_b", S), ("rank_a", I32), ("rank_b", I32),
        ("n_candidates", I32), ("n_sampled", I32),
    ),
    # pairwise: P(doc_a > doc_b | query); p_ba is P(doc_b > doc_a) when both orders were scored
    "pairwise": _schema(
        ("query_id", S), ("doc_a", S), ("doc_b", S), ("rank_a", I32), ("rank_b", I32),
        ("p_ab", F32), ("p_ba", F32), ("prob", F32),
        nullable=("p_ba",),
    ),
    # train: one row per optimizer step
    "loss": _schema(
        ("step", I64), ("loss", F32), ("loss_cl", F32), ("loss_kd", F32), ("loss_pair", F32),
        ("lr", F64), ("elapsed_s", F64),
    ),
    # teacher fitting (embedded default): one row per optimizer step
    "teacher_loss": _schema(("step", I64), ("loss", F32), ("lr", F64), ("elapsed_s", F64)),
    # evaluate: long format, one row per measure
    "metrics": _schema(("system", S), ("iteration", I32), ("measure", S), ("value", F64),
                       nullable=("iteration",)),
}


def schema(name: str) -> pa.Schema:
    return SCHEMAS[name]


def to_table(df: pd.DataFrame, name: str) -> pa.Table:
    """Cast a frame to the named schema; a missing or extra column is an error, not a silent drop."""
    target = SCHEMAS[name]
    cols = list(df.columns)
    expected = target.names
    if sorted(cols) != sorted(expected):
        missing = [c for c in expected if c not in cols]
        extra = [c for c in cols if c not in expected]
        raise ValueError(f"frame does not match schema {name!r}: missing {missing}, extra {extra}")
    return pa.Table.from_pandas(df[expected], schema=target, preserve_index=False)


@contextmanager
def atomic_path(path: str | Path, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a job killed before its rename leaves its temporary behind; only this job writes ``path``
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink(missing_ok=True)
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        if is_dir and path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def write_table(df: pd.DataFrame, name: str, path: str | Path) -> pa.Table:
    """Write ``df`` as the artifact ``name`` to ``path`` atomically; returns the typed table."""
    table = to_table(df, name)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return table


def read_table(path: str | Path, name: str | None = None) -> pd.DataFrame:
    """Read an artifact; with ``name``, check it carries that schema (a stale or foreign file fails)."""
    table = pq.read_table(path)
    if name is not None:
        expected = SCHEMAS[name]
        if not table.schema.remove_metadata().equals(expected):
            raise ValueError(f"{path}: schema does not match {name!r}:\n{table.schema}\nexpected\n{expected}")
    return table.to_pandas()
