"""train.passages: the groups' passage texts read from the corpus into a memory-mapped Arrow file."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from pairdistill import data, io
from pairdistill.train.passages import PassageTexts, read_passages


def _corpus(tmp_path, n=300):
    rng = np.random.default_rng(0)
    ids = [f"d{i}" for i in range(n)] + ["d5", "é-7", "x\x00y", "x"]  # d5 twice: the last row wins
    edges = ["", " ", "\t", "\x1c", "\u3000"]
    titles = [rng.choice(edges) + (f"title {i}" if i % 3 else "") + rng.choice(edges) for i in range(len(ids))]
    texts = [rng.choice(edges) + f"text {i} " * int(rng.integers(0, 4)) + rng.choice(edges) for i in range(len(ids))]
    frame = pd.DataFrame({"doc_id": ids, "title": titles, "text": texts})
    path = tmp_path / "corpus.parquet"
    table = io.to_table(frame, "corpus")
    import pyarrow.parquet as pq

    pq.write_table(table, path, row_group_size=64)  # several row groups
    want = {}
    for d, t, x in zip(ids, titles, texts):
        want[d] = data.passage_text(t, x)
    return path, want


@pytest.mark.parametrize("wanted", ["some", "all"])
def test_the_texts_are_the_corpus_joined_and_nothing_is_left_in_the_spill_dir(tmp_path, wanted):
    path, want = _corpus(tmp_path)
    spill = tmp_path / "spill"
    spill.mkdir()
    ids = list(want) if wanted == "all" else ["d5", "é-7", "x\x00y", "x", "d17", "d299", "not-there"]
    texts = read_passages(path, pa.array(ids), spill_dir=spill)
    assert os.listdir(spill) == []
    found = [d for d in ids if d in want]
    assert len(texts) == len(set(found)) and sorted(texts) == sorted(set(found))
    assert {d: texts[d] for d in found} == {d: want[d] for d in found}
    assert texts.missing(ids) == [d for d in ids if d not in want]
    for absent in ("not-there", "x\x00", "x\x00y\x00", "d2999999999", 5):
        assert absent not in texts
        with pytest.raises(KeyError):
            texts[absent]


def test_ids_as_fixed_width_bytes_and_as_python_strings_look_up_alike():
    ids = ["b", "a", "ab", "é", "", "zz9"]
    plain = PassageTexts(pa.array(ids), np.arange(len(ids)), [pa.array([f"t{i}" for i in range(len(ids))])])
    nul = PassageTexts(pa.array(ids + ["a\x00"]), np.arange(len(ids) + 1),
                       [pa.array([f"t{i}" for i in range(len(ids) + 1)])])
    for i, d in enumerate(ids):
        assert plain[d] == nul[d] == f"t{i}"
    assert nul["a\x00"] == f"t{len(ids)}" and "a\x00" not in plain
    assert list(plain) == sorted(ids) and "abc" not in plain and "zz" not in plain
