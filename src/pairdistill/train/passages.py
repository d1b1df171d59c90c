"""The texts of the training groups' passages, in a memory-mapped Arrow file (not a dict of Python strings).

At MS MARCO size the groups reach nearly all 8.8M passages: as Python strings in a dict that is
several GB more than the ~3.5 GB of text itself, and even as Arrow strings in memory the text is
most of the train job's memory. :func:`read_passages` reads the corpus's ids, finds the rows it
needs (one hash pass), and reads their title and text a row group at a time, joined as
:func:`pairdistill.data.passage_text` joins them, into an uncompressed Arrow IPC file that it then
memory-maps (and unlinks: nothing is left behind): a step reads the pages of its own passages
only. :class:`PassageTexts` looks an id up by binary search in a sorted array of the ids.
"""

from __future__ import annotations

import os
import sys
import tempfile
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
        self._keys, self._bytes = _sorted_keys(ids.take(pa.array(order)))  # sorted as Arrow sorts
        self._rows = rows[order]
        self._chunks = chunks
        self._starts = np.cumsum([0] + [len(c) for c in chunks])

    def _row(self, doc_id) -> int:
        if not isinstance(doc_id, str) or not len(self._keys):
            raise KeyError(doc_id)
        key = doc_id.encode() if self._bytes else doc_id
        if self._bytes and (b"\0" in key or len(key) > self._keys.dtype.itemsize):
            raise KeyError(doc_id)  # not a key a fixed-width bytes array holds
        i = int(np.searchsorted(self._keys, key))
        if i >= len(self._keys) or self._keys[i] != key:
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
        keys = self._keys.tolist()
        return iter([k.decode() for k in keys] if self._bytes else keys)

    def missing(self, doc_ids) -> list[str]:
        """Those of ``doc_ids`` that have no text here."""
        return [d for d in doc_ids if d not in self]

    @property
    def nbytes(self) -> int:
        return int(self._keys.nbytes + self._rows.nbytes + sum(c.nbytes for c in self._chunks))


def _sorted_keys(ids: pa.Array) -> tuple[np.ndarray, bool]:
    """``ids`` (sorted, unique) as a NumPy array that np.searchsorted orders the same way, and whether
    it holds bytes: UTF-8 in fixed-width ``S`` entries (byte order is Arrow's order), filled from the
    Arrow buffers without a Python string per id; ids holding a NUL byte (which ``S`` would not keep
    apart) as a ``U`` array of Python strings."""
    ids = ids.cast(pa.string())
    if not len(ids):
        return np.array([], dtype=object), False
    if ids.null_count or pc.any(pc.match_substring(ids, "\0")).as_py():
        keys = np.empty(len(ids), dtype=object)  # U would drop trailing NULs too
        keys[:] = ids.to_pylist()
        return keys, False
    offsets = np.frombuffer(ids.buffers()[1], dtype=np.int32, count=len(ids) + 1, offset=ids.offset * 4)
    data = np.frombuffer(ids.buffers()[2], dtype=np.uint8) if ids.buffers()[2] is not None else \
        np.zeros(0, dtype=np.uint8)
    lens = np.diff(offsets)
    width = max(1, int(lens.max()))
    out = np.zeros((len(ids), width), dtype=np.uint8)
    for j in range(width):  # column j of every id at least j+1 bytes long
        has = np.flatnonzero(lens > j)
        out[has, j] = data[offsets[has] + j]
    return out.view(f"S{width}").ravel(), True


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


def read_passages(corpus_path, doc_ids, spill_dir=None) -> PassageTexts:
    """The texts of ``doc_ids`` (an Arrow array or any iterable of ids) found in the corpus artifact;
    the corpus's last row of an id repeated in it wins, as a dict of the rows would have it.

    The joined texts go to an Arrow file in ``spill_dir`` (default: the temporary directory), which
    is memory-mapped and unlinked at once (where the system allows; else when the texts are freed)."""
    io._check_schema(corpus_path, "corpus")
    wanted = pc.unique(_strings(doc_ids if isinstance(doc_ids, (pa.Array, pa.ChunkedArray))
                                else pa.array(list(doc_ids), type=pa.string())))
    wanted = wanted.combine_chunks() if isinstance(wanted, pa.ChunkedArray) else wanted
    parquet = pq.ParquetFile(corpus_path)
    code = _lookup(wanted, _strings(parquet.read(columns=["doc_id"]).column("doc_id")))
    rows = np.full(len(wanted), -1, dtype=np.int64)
    schema = pa.schema([("text", pa.string())])
    fd, path = tempfile.mkstemp(prefix="pairdistill-passages.", suffix=".arrow", dir=spill_dir)
    try:
        done, start = 0, 0
        with os.fdopen(fd, "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
            for g in range(parquet.num_row_groups):
                n = parquet.metadata.row_group(g).num_rows
                mine = np.flatnonzero(code[start:start + n] >= 0)
                if len(mine):
                    part = parquet.read_row_group(g, columns=["title", "text"]).take(pa.array(mine))
                    writer.write_batch(pa.record_batch([_joined(_strings(part.column("title")).combine_chunks(),
                                                                _strings(part.column("text")).combine_chunks())],
                                                       schema=schema))
                    rows[code[start + mine]] = done + np.arange(len(mine))
                    done += len(mine)
                start += n
        texts = pa.ipc.open_file(pa.memory_map(path, "r")).read_all().column("text")  # zero-copy: the map's pages
    finally:
        _unlink(path, texts if "texts" in locals() else None)
    found = rows >= 0
    return PassageTexts(wanted.filter(pa.array(found)), rows[found], texts.chunks)


def _unlink(path: str, mapped) -> None:
    """Remove the spilled file now (a mapped file stays readable on POSIX), or once ``mapped`` is freed."""
    try:
        os.unlink(path)
    except OSError:
        if mapped is None:
            raise
        import weakref

        weakref.finalize(mapped, lambda: os.path.exists(path) and os.unlink(path))
