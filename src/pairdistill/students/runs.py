"""What every student's index and search share, whatever the kind (:mod:`pairdistill.students`).

An index directory keeps :data:`SEARCH_SETTINGS`, how its collection is searched (the query
length, whether a query's own document is dropped), and every search returns a frame in the io
"run" schema. Imported by :mod:`.colbert` and :mod:`.dpr`, and importing neither.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .. import io

SEARCH_SETTINGS = "pairdistill_search.json"  # in an index: how its collection is searched


def write_search_settings(index_dir: str | Path, query_maxlen: int | None, drop_self_matches: bool) -> None:
    """Keep in an index how its collection is searched (read back by :func:`index_search_settings`)."""
    (Path(index_dir) / SEARCH_SETTINGS).write_text(json.dumps({"query_maxlen": query_maxlen,
                                                               "drop_self_matches": bool(drop_self_matches)}))


def index_search_settings(index_dir: str | Path) -> dict:
    """The collection's search settings kept in its index (none for indexes built before them)."""
    path = Path(index_dir) / SEARCH_SETTINGS
    return json.loads(path.read_text()) if path.exists() else {}


def drop_self_matches(run: pd.DataFrame, k: int) -> pd.DataFrame:
    """``run`` without hits whose document id is the query's id, the rest re-ranked, top-``k`` kept."""
    run = run[run["doc_id"].astype(str) != run["query_id"].astype(str)]
    run = run.sort_values(["query_id", "rank"], kind="stable").copy()
    run["rank"] = run.groupby("query_id").cumcount() + 1
    return run[run["rank"] <= k].reset_index(drop=True)


def empty_run() -> pd.DataFrame:
    """A run without rows (e.g. a query shard that no query hashed to), typed as the run schema."""
    return io.SCHEMAS["run"].empty_table().to_pandas()
