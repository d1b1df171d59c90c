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

def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()

S, I32, I64, F32, F64, B = pa.string(), pa.int32(), pa.int64(), pa.float32(), pa.float64(), pa.bool_()


# Rows per Parquet row group: a shard job that picks its queries or passages out of a large file
# (read_rows) holds one row group at a time, so this bounds its memory whatever the file's size.
ROW_GROUP_ROWS = 65_536


def _schema(*fields: tuple[str, pa.DataType], nullable: tuple[str, ...] = ()) -> pa.Schema:
    return pa.schema([pa.field(n, t, nullable=n in nullable) for n, t in fields])


SCHEMAS: dict[str, pa.Schema] = {
    # prepare
    "corpus": _schema(("doc_id", S), ("title", S), ("text", S)),
    # one row per (split, query): the split's query set, labelled or not (qrels say which are)
    "queries": _schema(("split", S), ("query_id", S), ("text", S)),
    "qrels": _schema(("split", S), ("query_id", S), ("doc_id", S), ("relevance", I32)),
    # open-domain QA (loaders.qa): one row per (question, answer string); matched against passages
    "answers": _schema(("query_id", S), ("answer", S)),
    # retrieve / evaluate: one row per (query, retrieved passage)
    "run": _schema(("query_id", S), ("doc_id", S), ("rank", I32), ("score", F32)),
    # pointwise: the retrieved list re-scored by the pointwise teacher; retriever columns are null
    # for labelled positives the retriever missed (added so every training group has one);
    # cached: the score was reused from an earlier iteration's file of the same teacher
    "pointwise": _schema(
        ("query_id", S), ("doc_id", S), ("retriever_rank", I32), ("retriever_score", F32),
        ("teacher_score", F32), ("teacher_rank", I32), ("cached", B),
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
        ("p_ab", F32), ("p_ba", F32), ("prob", F32), ("cached", B),
        nullable=("p_ba",),
    ),
    # train: one row per optimizer step
    "loss": _schema(
        ("step", I64), ("loss", F32), ("loss_cl", F32), ("loss_kd", F32), ("loss_pair", F32),
        ("lr", F64), ("elapsed_s", F64),
    ),
    # teacher fitting (embedded default): one row per optimizer step
    "teacher_loss": _schema(("step", I64), ("loss", F32), ("lr", F64), ("elapsed_s", F64)),
    # evaluate: long format, one row per measure; eval_set names the collection and split
    # ("scifact/test", "msmarco/dl19", "beir/cranfield/test")
    "metrics": _schema(("system", S), ("iteration", I32), ("eval_set", S), ("measure", S), ("value", F64),
                       nullable=("iteration",)),
    # ablation-table: each variant against the full method at the same iteration; p_value is null
    # for the full method itself and where a variant agrees with it on every query
    "ablations": _schema(("variant", S), ("iteration", I32), ("eval_set", S), ("measure", S), ("value", F64),
                         ("delta", F64), ("p_value", F64), ("n_queries", I32), ("n_seeds", I32), ("delta_sd", F64),
                         ("p_seeds", F64), ("spread", S), nullable=("p_value", "delta_sd", "p_seeds")),
    # seed-table: each number of the summary over the seeds (pairdistill.seeds); sd is null with
    # one seed, 0 for a system no seed changes (depends_on_seed false: BM25, the bi-encoder)
    "seeds": _schema(("system", S), ("iteration", I32), ("eval_set", S), ("measure", S), ("mean", F64),
                     ("sd", F64), ("n_seeds", I32), ("seeds", pa.list_(I32)), ("values", pa.list_(F64)),
                     ("depends_on_seed", B), nullable=("iteration", "sd")),
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
    # mkstemp/mkdtemp create owner-only entries; give the result the permissions of a plain
    # open()/mkdir() under the user's umask, so collaborators on a shared cluster can read it
    os.chmod(tmp, (0o777 if is_dir else 0o666) & ~_UMASK)
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


def link_or_copy(src: str | Path, dst: str | Path) -> None:
    """Hard-link (else copy) ``src`` to ``dst``, a directory recursively. Snakemake's markers
    (``.snakemake_timestamp`` in a directory output) are left out: shared by a hard link, the one
    Snakemake touches when the job writing ``dst`` ends would also be ``src``'s, and make every
    consumer of ``src`` look out of date."""
    src, dst = Path(src), Path(dst)
    if src.name.startswith(".snakemake"):
        return
    if src.is_dir():
        dst.mkdir(parents=True, exist_ok=True)
        for child in src.iterdir():
            link_or_copy(child, dst / child.name)
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def link_artifact(src: str | Path, out: str | Path) -> None:
    """A finished artifact (file or directory) at another path too, hard-linked.

    ``src`` at ``out`` too, written atomically: another run's finished artifact taken as it is (an
    ablation variant's or another seed's stage that its setting does not reach). A directory's files
    are hard-linked (Snakemake's markers left out), a file is copied (see below)."""
    src = Path(src)
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such artifact to link")
    with atomic_path(out, is_dir=src.is_dir()) as tmp:
        if src.is_dir():
            link_or_copy(src, tmp)
        else:
            # a file output is copied: Snakemake touches a job's output file when it ends, and through
            # a hard link that would be ``src``'s modification time too (every consumer of ``src``
            # then looks out of date: seen with seeds' shared data, 2026-12-03)
            shutil.copy2(src, tmp)


def _with_metadata(schema: pa.Schema, metadata: dict[str, str] | None) -> pa.Schema:
    if not metadata:
        return schema
    return schema.with_metadata({**(schema.metadata or {}), **{f"pairdistill.{k}": v for k, v in metadata.items()}})


def write_table(df: pd.DataFrame, name: str, path: str | Path, metadata: dict[str, str] | None = None) -> pa.Table:
    """Write ``df`` as the artifact ``name`` to ``path`` atomically; returns the typed table.

    ``metadata`` is stored in the file's key-value metadata as ``pairdistill.<key>`` (e.g. which
    teacher produced the scores), readable with :func:`read_metadata`."""
    table = to_table(df, name)
    table = table.replace_schema_metadata(_with_metadata(table.schema, metadata).metadata)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=ROW_GROUP_ROWS)
    return table


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``pairdistill.*`` key-value metadata of an artifact (prefix removed)."""
    meta = pq.read_schema(path).metadata or {}
    prefix = b"pairdistill."
    return {k[len(prefix):].decode(): v.decode() for k, v in meta.items() if k.startswith(prefix)}


def _check_schema(path, name: str) -> None:
    """A stale or foreign file fails here, naming what it holds and what was expected."""
    schema, expected = pq.read_schema(path), SCHEMAS[name]
    if not schema.remove_metadata().equals(expected):
        raise ValueError(f"{path}: schema does not match {name!r}:\n{schema}\nexpected\n{expected}")


def read_table(path: str | Path, name: str | None = None, columns: list[str] | None = None, *,
               arrow: bool = False, dictionary: list[str] | None = None) -> pd.DataFrame | pa.Table:
    """Read an artifact; with ``name``, check it carries that schema (a stale or foreign file fails).
    ``arrow``: as the Arrow table, not converted to pandas (at MS MARCO size the training files'
    string columns take several times their Arrow size as Python strings); ``dictionary``: those
    columns dictionary-encoded as Parquet stores them (a query's id once per row group, not per row)."""
    if name is not None:
        _check_schema(path, name)
    table = pq.read_table(path, columns=columns, read_dictionary=dictionary)
    return table if arrow else table.to_pandas()


def read_rows(path: str | Path, name: str, column: str, values, columns: list[str] | None = None, *,
              arrow: bool = False) -> pd.DataFrame | pa.Table:
    """The rows of an artifact whose ``column`` is in ``values``, scanned one row group at a time.

    A shard job reads the passages and queries it needs this way: its memory follows the shard,
    not the size of the collection or of the whole query set. ``arrow``: as :func:`read_table`."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    _check_schema(path, name)
    wanted = pa.array(sorted(set(values)), type=SCHEMAS[name].field(column).type)
    dataset = ds.dataset(str(path), format="parquet")
    table = dataset.to_table(columns=columns, filter=pc.field(column).isin(wanted))
    return table if arrow else table.to_pandas()


def concat_files(paths: list[str | Path], name: str, out: str | Path) -> int:
    """Concatenate artifacts of schema ``name`` into ``out`` one file at a time (no file is held
    with another in memory); returns the number of rows. Written atomically, with the first
    file's metadata (pandas dtypes such as nullable Int32, and ``pairdistill.*`` such as the teacher)."""
    rows = 0
    schema = SCHEMAS[name].with_metadata(pq.read_schema(paths[0]).metadata if paths else None)
    with atomic_path(out) as tmp:
        with pq.ParquetWriter(tmp, schema) as writer:
            for path in paths:
                _check_schema(path, name)
                part = pq.ParquetFile(path)
                for i in range(part.num_row_groups):
                    group = part.read_row_group(i)
                    writer.write_table(group.replace_schema_metadata(schema.metadata))
                    rows += group.num_rows
    return rows
