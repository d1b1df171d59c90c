"""The texts of the training groups' passages, held as Arrow strings (not a dict of Python strings).

At MS MARCO size the groups reach nearly all 8.8M passages: as Python strings in a dict that is
several GB more than the ~3.5 GB of text itself. :func:`read_passages` reads the corpus's ids,
finds the rows it needs (one hash pass), and reads their title and text a row group at a time,
joined as :func:`pairdistill.data.passage_text` joins them; :class:`PassageTexts` looks an id up
by binary search in a sorted array of the ids.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .. import data, io
from .batches import _lookup, _strings

# what str.strip() strips: the texts whose title or text start or end with one are joined in Python
_WHITESPACE = pa.array([chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace()], type=pa.string())


class PassageTexts(Mapping):
    """doc id -> the text the models see, for the passages it was read for."""

    def __init__(self, ids: pa.Array, rows: np.ndarray, chunks: list[pa.Array]):
        """``ids`` (unique), ``rows[i]`` the row of ``ids[i]``'s text in the concatenated ``chunks``."""
        order = np.asarray(pc.array_sort_indices(ids), dtype=np.int64)
        self._keys = np.array(ids.take(pa.array(order)).to_pylist(), dtype=str)  # sorted as Arrow sorts
        self._rows = rows[order]
        self._chunks = chunks
        self._starts = np.cumsum([0] + [len(c) for c in chunks])

    def _row(self, doc_id) -> int:
        if not isinstance(doc_id, str) or not len(self._keys):
            raise KeyError(doc_id)
        i = int(np.searchsorted(self._keys, doc_id))
        if i >= len(self._keys) or self._keys[i] != doc_id:
            raise KeyError(doc_id)
        return int(self._rows[i])

    def __getitem__(self, doc_id) -> str:
        row = self._row(doc_id)
        k = int(np.searchsorted(self._starts, row, side="right")) - 1
        return self._chunks[k][row - self._starts[k]].as_py()

    def __contains__(self, doc_id) -> bool:
        try:
            self._row(doc_id)
        except KeyError:
            return False
        return True

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self):
        return iter(self._keys.tolist())

    def missing(self, doc_ids) -> list[str]:
        """Those of ``doc_ids`` that have no text here."""
        return [d for d in doc_ids if d not in self]

    @property
    def nbytes(self) -> int:
        return int(self._keys.nbytes + self._rows.nbytes + sum(c.nbytes for c in self._chunks))


def _joined(title: pa.Array, text: pa.Array) -> pa.Array:
    """:func:`data.passage_text` of each row: Arrow for the rows with nothing to strip, Python for the rest."""
    def edge(col, start, stop):
        return pc.is_in(pc.utf8_slice_codeunits(col, start, stop), value_set=_WHITESPACE)

    raw = pc.or_(pc.or_(edge(title, 0, 1), edge(title, -1, sys.maxsize)),
                 pc.or_(edge(text, 0, 1), edge(text, -1, sys.maxsize)))
    both = pc.binary_join_element_wise(title, text, " ")
    out = pc.if_else(pc.equal(title, ""), text, pc.if_else(pc.equal(text, ""), title, both))
    if pc.any(raw).as_py():
        rows = np.flatnonzero(raw.to_numpy(zero_copy_only=False))
        fixed = [data.passage_text(t, x) for t, x in zip(title.take(pa.array(rows)).to_pylist(),
                                                          text.take(pa.array(rows)).to_pylist())]
        values = out.to_pylist()
        for r, v in zip(rows.tolist(), fixed):
            values[r] = v
        out = pa.array(values, type=pa.string())
    return out


def read_passages(corpus_path, doc_ids) -> PassageTexts:
    """The texts of ``doc_ids`` (an Arrow array or any iterable of ids) found in the corpus artifact;
    the corpus's last row of an id repeated in it wins, as a dict of the rows would have it."""
    io._check_schema(corpus_path, "corpus")
    wanted = pc.unique(_strings(doc_ids if isinstance(doc_ids, (pa.Array, pa.ChunkedArray))
                                else pa.array(list(doc_ids), type=pa.string())))
    wanted = wanted.combine_chunks() if isinstance(wanted, pa.ChunkedArray) else wanted
    parquet = pq.ParquetFile(corpus_path)
    code = _lookup(wanted, _strings(parquet.read(columns=["doc_id"]).column("doc_id")))
    rows = np.full(len(wanted), -1, dtype=np.int64)
    chunks, done, start = [], 0, 0
    for g in range(parquet.num_row_groups):
        n = parquet.metadata.row_group(g).num_rows
        mine = np.flatnonzero(code[start:start + n] >= 0)
        if len(mine):
            part = parquet.read_row_group(g, columns=["title", "text"]).take(pa.array(mine))
            chunks.append(_joined(_strings(part.column("title")).combine_chunks(),
                                  _strings(part.column("text")).combine_chunks()))
            rows[code[start + mine]] = done + np.arange(len(mine))
            done += len(mine)
        start += n
    found = rows >= 0
    return PassageTexts(wanted.filter(pa.array(found)), rows[found], chunks)
