"""Query shards and scoring in resumable parts.

A shard is named ``"003-of-008"``: shard 3 of 8. A query's shard is a hash of its id, so the
assignment never depends on which other queries exist or on their order, and rerunning with the
same shard count puts every query where it was.

A scoring job (pointwise or pairwise teacher) works through its rows in parts of a fixed size and
writes each finished part to a directory beside its output, outside the job's declared outputs.
Killed and rerun, it reads the finished parts and scores only the rest; when the job's output is
written the parts are removed. A manifest ties the parts to the exact rows and teacher, so parts
left by a job with other inputs are discarded, never mixed in.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from . import io, preemption

_NAME = re.compile(r"^(\d+)-of-(\d+)$")


def shard_name(index: int, count: int) -> str:
    if not 0 <= index < count:
        raise ValueError(f"shard {index} out of range for {count} shards")
    return f"{index:03d}-of-{count:03d}"


def parse_shard(name: str) -> tuple[int, int]:
    """``"003-of-008"`` -> (3, 8)."""
    m = _NAME.match(name)
    if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise ValueError(f"bad shard name {name!r}: expected e.g. 003-of-008 (index < count)")
    return int(m.group(1)), int(m.group(2))


def shard_names(count: int) -> list[str]:
    return [shard_name(i, count) for i in range(count)]


def shard_of(query_id: str, count: int) -> int:
    """The shard of a query: the first 8 bytes of sha1(query id), modulo ``count``."""
    return int.from_bytes(hashlib.sha1(query_id.encode("utf-8")).digest()[:8], "big") % count


def in_shard(query_ids: Iterable[str], shard: str | None) -> np.ndarray:
    """Boolean mask of the queries that belong to ``shard`` (all of them for ``None``)."""
    ids = list(query_ids)
    if shard is None:
        return np.ones(len(ids), dtype=bool)
    index, count = parse_shard(shard)
    return np.fromiter((shard_of(q, count) == index for q in ids), dtype=bool, count=len(ids))


# --------------------------------------------------------------------------------------------
# Resumable scoring
# --------------------------------------------------------------------------------------------

def parts_dir(out: str | Path) -> Path:
    """Where the parts of the job writing ``out`` live: ``.<name>.parts`` beside it."""
    out = Path(out)
    return out.parent / f".{out.name}.parts"


def keys_digest(keys: pd.DataFrame) -> str:
    """A digest of the rows to score (their key columns, in order)."""
    h = hashlib.sha256()
    h.update(json.dumps(list(keys.columns)).encode())
    for column in keys.columns:
        h.update(pd.util.hash_pandas_object(keys[column], index=False).to_numpy().tobytes())
    return h.hexdigest()


def score_in_parts(keys: pd.DataFrame, score: Callable[[pd.DataFrame], dict[str, np.ndarray]], out: str | Path,
                   *, part_rows: int, identity: str, log: Callable[[str], None] = print) -> pd.DataFrame:
    """Score ``keys`` (one row per item) in parts of ``part_rows`` rows, resuming finished parts.

    ``score(chunk)`` returns float32 arrays, one per value column, aligned with ``chunk``. Returns
    the value columns for all of ``keys``, in order. The parts directory of ``out`` is left in
    place (the caller removes it with :func:`clear_parts` once ``out`` is written), so a kill at
    any point after a part is finished loses only the part in progress.
    """
    if part_rows < 1:
        raise ValueError(f"part_rows must be positive, got {part_rows}")
    directory = parts_dir(out)
    manifest = {"identity": identity, "rows": len(keys), "part_rows": part_rows, "keys": keys_digest(keys)}
    manifest_path = directory / "manifest.json"
    if directory.exists():
        previous = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
        if previous is not None and {**previous, "part_rows": part_rows} == manifest:
            # same rows and teacher, another part size (e.g. lowered after the kill): keep the
            # finished parts by finishing in their size
            if previous["part_rows"] != part_rows:
                log(f"resuming with the parts' own size {previous['part_rows']} (not {part_rows})")
            manifest = previous
            part_rows = previous["part_rows"]
        else:
            log(f"discarding parts in {directory}: they were written for other inputs")
            shutil.rmtree(directory)
    if not directory.exists():
        with io.atomic_path(directory, is_dir=True) as tmp:
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    n_parts = -(-len(keys) // part_rows)
    done = sum((directory / f"part-{k:06d}.parquet").is_file() for k in range(n_parts))
    if done:
        log(f"resuming: {done} of {n_parts} parts already scored in {directory}")
    tables = []
    for k in range(n_parts):
        path = directory / f"part-{k:06d}.parquet"
        if path.is_file():
            try:
                tables.append(pq.read_table(path))
                continue
            except (OSError, pa.ArrowException) as exc:  # e.g. truncated by a machine crash
                log(f"rescoring unreadable part {path.name}: {exc}")
                path.unlink()
        chunk = keys.iloc[k * part_rows:(k + 1) * part_rows].reset_index(drop=True)
        values = score(chunk)
        table = pa.table({name: pa.array(np.asarray(v, dtype=np.float32), type=pa.float32(), from_pandas=True)
                          for name, v in values.items()})
        with io.atomic_path(path) as tmp:
            pq.write_table(table, tmp)
        log(f"part {k + 1}/{n_parts} scored ({len(chunk)} rows)")
        preemption.durable(f"part {k + 1}/{n_parts}")
        tables.append(table)
    if not tables:
        return pd.DataFrame()
    return pa.concat_tables(tables).to_pandas()


def clear_parts(out: str | Path) -> None:
    shutil.rmtree(parts_dir(out), ignore_errors=True)
