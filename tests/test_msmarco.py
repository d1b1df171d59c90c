"""MS MARCO passage-ranking TSV inputs: streamed corpus, split-labelled queries, both qrels formats,
and every bad input failing with file:line while leaving no artifact (or temporary) behind."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from pairdistill import io
from pairdistill.loaders import common, msmarco
from pairdistill.data import input_files, prepare
from pairdistill.errors import InputError

DATA_DIR = Path(os.environ.get("PAIRDISTILL_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "datasets"))
DL19 = DATA_DIR / "msmarco-dl19-subset"

# 30 passages; pid 4's text holds a tab (only the first tab separates) and MS MARCO's mojibake
PASSAGES = [(str(pid), f"passage number {pid} about topic {pid % 5}") for pid in range(30)]
PASSAGES[4] = ("4", "a\ttabbed passage â€™ with mojibake")
TRAIN_QUERIES = [(str(q), f"train question {q}?") for q in (117, 100, 105, 101, 102, 103, 104, 106, 107, 108,
                                                             109, 110, 111, 112, 113, 114, 115, 116, 118, 119)]
DEV_QUERIES = [(str(q), f"dev question {q}?") for q in (204, 200, 201, 202, 203)]
DL19_QUERIES = [(str(q), f"trec question {q}?") for q in (300, 301, 302, 303)]
# labelled train queries: 100-109 (one judgement each, 109 two); the other ten are unlabelled
TRAIN_QRELS = [(str(q), str(q - 100), 1) for q in range(100, 110)] + [("109", "29", 1)]
DEV_QRELS = [("200", "11", 1), ("201", "12", 1), ("203", "13", 1)]
DL19_QRELS = [("300", "4", 3), ("300", "5", 0), ("300", "6", 2), ("301", "5", 1), ("302", "20", 0)]

FILES = {
    "collection": "collection.tsv",
    "queries": {"train": "queries.train.tsv", "dev": "queries.dev.small.tsv",
                "dl19": "msmarco-test2019-queries.tsv", "dl20": "msmarco-test2020-queries.tsv"},
    "qrels": {"train": "qrels.train.tsv", "dev": "qrels.dev.small.tsv", "dl19": "2019qrels-pass.txt"},
}
SPLITS = ["train", "dev", "dl19", "dl20"]


def tsv(rows) -> str:
    return "".join("\t".join(map(str, row)) + "\n" for row in rows)


def make_msmarco(root: Path, name: str = "msmarco") -> Path:
    """Stand-in MS MARCO files under ``root/name``, in the real files' formats."""
    ds = root / name
    ds.mkdir(parents=True)
    (ds / "collection.tsv").write_text(tsv(PASSAGES), encoding="utf-8")
    (ds / "queries.train.tsv").write_text(tsv(TRAIN_QUERIES))
    (ds / "queries.dev.small.tsv").write_text(tsv(DEV_QUERIES))
    (ds / "msmarco-test2019-queries.tsv").write_text(tsv(DL19_QUERIES))
    (ds / "msmarco-test2020-queries.tsv").write_text(tsv([("400", "unlabelled 2020 question")]))
    (ds / "qrels.train.tsv").write_text(tsv((q, 0, d, r) for q, d, r in TRAIN_QRELS))
    (ds / "qrels.dev.small.tsv").write_text(tsv((q, 0, d, r) for q, d, r in DEV_QRELS))
    (ds / "2019qrels-pass.txt").write_text("".join(f"{q} Q0 {d} {r}\n" for q, d, r in DL19_QRELS))
    return ds


def outputs(tmp_path: Path) -> dict[str, Path]:
    out = tmp_path / "out"
    return {"out_corpus": out / "corpus.parquet", "out_queries": out / "queries.parquet",
            "out_qrels": out / "qrels.parquet"}


def run(tmp_path: Path, splits=SPLITS, files=FILES, **kwargs) -> dict:
    return prepare(tmp_path, "msmarco", splits, **outputs(tmp_path), format="msmarco", files=files, **kwargs)


def artifacts(tmp_path: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    paths = outputs(tmp_path)
    return (io.read_table(paths["out_corpus"], "corpus"), io.read_table(paths["out_queries"], "queries"),
            io.read_table(paths["out_qrels"], "qrels"))


def rows(frame: pd.DataFrame) -> list[tuple]:
    return list(frame.itertuples(index=False, name=None))


def assert_nothing_written(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert not out.exists() or sorted(p.name for p in out.iterdir()) == []


# --- valid inputs -------------------------------------------------------------------------------

def test_prepare_writes_exact_artifacts(tmp_path):
    make_msmarco(tmp_path)
    stats = run(tmp_path)
    assert stats == {
        "documents": 30, "skipped_empty": 0,
        "queries": {"train": 20, "dev": 5, "dl19": 4, "dl20": 1},
        "labelled": {"train": 10, "dev": 3, "dl19": 3, "dl20": 0},
        "qrels": {"train": 11, "dev": 3, "dl19": 5, "dl20": 0},
        "qrels_dropped_empty": {"train": 0, "dev": 0, "dl19": 0, "dl20": 0},
    }
    corpus, queries, qrels = artifacts(tmp_path)
    assert rows(corpus) == [(pid, "", text) for pid, text in PASSAGES]
    assert corpus.loc[4, "text"] == "a\ttabbed passage â€™ with mojibake"
    expected_queries = [(split, q, t) for split, queries in (("train", TRAIN_QUERIES), ("dev", DEV_QUERIES),
                                                           ("dl19", DL19_QUERIES))
                        for q, t in sorted(queries)] + [("dl20", "400", "unlabelled 2020 question")]
    assert rows(queries) == expected_queries
    assert rows(qrels) == ([("train", q, d, r) for q, d, r in TRAIN_QRELS] + [("dev", *x) for x in DEV_QRELS]
                           + [("dl19", *x) for x in DL19_QRELS])
    assert qrels["relevance"].dtype == "int32"
    for name, path in outputs(tmp_path).items():
        assert pq.read_schema(path).remove_metadata().equals(io.SCHEMAS[name.removeprefix("out_")])


def test_unlabelled_train_queries_are_kept(tmp_path):
    make_msmarco(tmp_path)
    stats = run(tmp_path, splits=["train"])
    _, queries, qrels = artifacts(tmp_path)
    assert set(queries["split"]) == set(qrels["split"]) == {"train"}
    assert set(queries["query_id"]) == {q for q, _ in TRAIN_QUERIES}  # all 20, not only the 10 judged
    assert qrels["query_id"].nunique() == stats["labelled"]["train"] == 10
    assert stats["queries"] == {"train": 20}


def test_split_without_qrels_only(tmp_path):
    make_msmarco(tmp_path)
    stats = run(tmp_path, splits=["dl20"])
    _, queries, qrels = artifacts(tmp_path)
    assert rows(queries) == [("dl20", "400", "unlabelled 2020 question")] and qrels.empty
    assert stats["labelled"] == stats["qrels"] == {"dl20": 0}


def test_small_batches_write_several_row_groups_with_equal_content(tmp_path):
    make_msmarco(tmp_path)
    run(tmp_path)
    whole = artifacts(tmp_path)
    assert pq.ParquetFile(outputs(tmp_path)["out_corpus"]).num_row_groups == 1
    run(tmp_path, batch_rows=4)
    assert pq.ParquetFile(outputs(tmp_path)["out_corpus"]).num_row_groups == 8  # ceil(30 / 4)
    for before, after in zip(whole, artifacts(tmp_path)):
        pd.testing.assert_frame_equal(after, before)


def test_crlf_bom_blank_lines_and_absolute_paths(tmp_path):
    ds = make_msmarco(tmp_path)
    run(tmp_path)
    expected = artifacts(tmp_path)
    for name in ("collection.tsv", "queries.train.tsv", "qrels.train.tsv"):
        raw = (ds / name).read_bytes()
        (ds / name).write_bytes(b"\xef\xbb\xbf" + raw.replace(b"\n", b"\r\n") + b"\r\n")
    (ds / "qrels.dev.small.tsv").write_text(tsv((q, 0, d, r) for q, d, r in DEV_QRELS).replace("\t", "  "))
    files = {**FILES, "collection": str(ds / "collection.tsv")}
    run(tmp_path, files=files, batch_rows=7)
    for before, after in zip(expected, artifacts(tmp_path)):
        pd.testing.assert_frame_equal(after, before)


def test_empty_passage_skipped_and_its_judgement_dropped(tmp_path):
    ds = make_msmarco(tmp_path)
    passages = PASSAGES.copy()
    passages[5] = ("5", "  ")
    (ds / "collection.tsv").write_text(tsv(passages))
    with pytest.warns(UserWarning) as record:
        stats = run(tmp_path, batch_rows=4)
    messages = [str(w.message) for w in record]
    assert any("collection.tsv:6" in m and "'5'" in m for m in messages)
    assert any("2019qrels-pass.txt" in m and "300/5, 301/5" in m for m in messages)
    assert stats["documents"] == 29 and stats["skipped_empty"] == 1
    assert stats["qrels_dropped_empty"]["dl19"] == 2 and stats["qrels"]["dl19"] == 3
    assert stats["labelled"]["dl19"] == 2  # 301's only judgement was of the empty passage
    corpus, _, qrels = artifacts(tmp_path)
    assert "5" not in set(corpus["doc_id"]) and "5" not in set(qrels["doc_id"])


def test_colliding_hashes_are_not_duplicates(tmp_path, monkeypatch):
    make_msmarco(tmp_path)
    run(tmp_path)
    expected = artifacts(tmp_path)
    collide(monkeypatch)
    run(tmp_path, batch_rows=4)
    for before, after in zip(expected, artifacts(tmp_path)):
        pd.testing.assert_frame_equal(after, before)


def collide(monkeypatch):
    """Every id hashes to 0, in the collection pass and in the rescan for the ids behind a repeat."""
    zeros = lambda ids: np.zeros(len(ids), dtype=np.uint64)  # noqa: E731
    monkeypatch.setattr(msmarco, "id_hashes", zeros)
    monkeypatch.setattr(common, "id_hashes", zeros)


def test_a_true_duplicate_among_colliding_hashes_is_found(tmp_path, monkeypatch):
    ds = make_msmarco(tmp_path)
    replace_line(ds / "collection.tsv", 26, b"7\tagain")
    collide(monkeypatch)
    with pytest.raises(InputError, match=r"collection.tsv:26: duplicate passage id '7' \(first seen on line 8\)"):
        run(tmp_path, batch_rows=4)


def test_input_files(tmp_path):
    root = tmp_path / "msmarco"
    files = {**FILES, "collection": "/abs/collection.tsv"}
    assert input_files(tmp_path, "msmarco", "msmarco", files, ["train", "dl20"]) == [
        "/abs/collection.tsv", str(root / "queries.train.tsv"), str(root / "msmarco-test2020-queries.tsv"),
        str(root / "qrels.train.tsv")]


@pytest.mark.skipif(not DL19.is_dir(), reason=f"no {DL19}")
def test_real_dl19_subset_as_tsv_equals_beir_layout(tmp_path):
    """The real passages (mojibake and all) written as MS MARCO files load as the BEIR files do."""
    ds = tmp_path / "dl19"
    ds.mkdir()
    with open(DL19 / "corpus.jsonl", encoding="utf-8") as fh:
        docs = [json.loads(line) for line in fh]
    (ds / "collection.tsv").write_text(tsv((d["_id"], d["text"]) for d in docs), encoding="utf-8")
    with open(DL19 / "queries.jsonl", encoding="utf-8") as fh:
        (ds / "queries.tsv").write_text(tsv((q["_id"], q["text"]) for q in map(json.loads, fh)), encoding="utf-8")
    (ds / "qrels.txt").write_text("".join(f"{q} Q0 {d} {r}\n" for q, d, r in (
        line.split("\t") for line in (DL19 / "qrels" / "test.tsv").read_text().splitlines())))
    files = {"collection": "collection.tsv", "queries": {"test": "queries.tsv"}, "qrels": {"test": "qrels.txt"}}
    stats = prepare(tmp_path, "dl19", ["test"], **outputs(tmp_path), format="msmarco", files=files,
                    batch_rows=1000)
    assert stats["documents"] == 5000 and stats["queries"] == {"test": 50} and stats["labelled"] == {"test": 43}
    assert pq.ParquetFile(outputs(tmp_path)["out_corpus"]).num_row_groups == 5
    corpus, queries, qrels = artifacts(tmp_path)
    prepare(DATA_DIR, "msmarco-dl19-subset", ["test"], **outputs(tmp_path / "beir"))
    beir_corpus, beir_queries, beir_qrels = artifacts(tmp_path / "beir")
    pd.testing.assert_frame_equal(corpus, beir_corpus)
    pd.testing.assert_frame_equal(qrels, beir_qrels)
    # BEIR keeps only the judged queries of a split; MS MARCO keeps the whole queries file
    pd.testing.assert_frame_equal(queries[queries["query_id"].isin(set(qrels["query_id"]))]
                                  .reset_index(drop=True), beir_queries)


# --- bad inputs ---------------------------------------------------------------------------------

def replace_line(path: Path, line: int, content: bytes) -> None:
    lines = path.read_bytes().split(b"\n")
    lines[line - 1] = content
    path.write_bytes(b"\n".join(lines))


BAD = {
    # name: (file, line number, new line content, expected fragments)
    "passage without tab": ("collection.tsv", 5, b"4 no tab here", ["no tab between passage id and text"]),
    "empty passage id": ("collection.tsv", 9, b"\tpassage without id", ["empty passage id"]),
    "passage id with space": ("collection.tsv", 2, b" 1\ttext", ["passage id ' 1' contains whitespace"]),
    "duplicate passage id": ("collection.tsv", 26, b"7\tagain", ["duplicate passage id '7'", "first seen on line 8"]),
    "invalid utf-8 in collection": ("collection.tsv", 17, b"16\tbad \xff byte", ["not valid UTF-8"]),
    "query without tab": ("queries.dev.small.tsv", 2, b"200", ["no tab between query id and text"]),
    "empty query text": ("queries.train.tsv", 3, b"105\t ", ["query '105' has empty text"]),
    "duplicate query id": ("queries.train.tsv", 4, b"117\tagain?",
                           ["duplicate query id '117'", "first seen on line 1"]),
    "invalid utf-8 in queries": ("msmarco-test2019-queries.tsv", 2, b"301\t\xc3(", ["not valid UTF-8"]),
    "non-integer relevance": ("2019qrels-pass.txt", 3, b"300 Q0 6 2.5", ["relevance '2.5' is not an integer"]),
    "three fields": ("qrels.train.tsv", 2, b"101\t1\t1", ["expected 4 fields", "got 3"]),
    "five fields": ("2019qrels-pass.txt", 1, b"300 Q0 4 3 extra", ["expected 4 fields", "got 5"]),
    "unknown query id": ("qrels.dev.small.tsv", 3, b"999\t0\t13\t1",
                         ["unknown query id '999'", "not in queries.dev.small.tsv"]),
    "query of another split": ("qrels.train.tsv", 1, b"200\t0\t0\t1", ["unknown query id '200'"]),
    "unknown document id": ("2019qrels-pass.txt", 4, b"301 Q0 77 1",
                            ["unknown document id '77'", "not in collection.tsv"]),
    "duplicate judgement": ("qrels.train.tsv", 11, b"109\t0\t9\t2", ["duplicate judgement", "first on line 10"]),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
@pytest.mark.parametrize("batch_rows", [100_000, 4])
def test_bad_input_names_file_and_line_and_writes_nothing(tmp_path, case, batch_rows):
    name, line, content, fragments = BAD[case]
    ds = make_msmarco(tmp_path)
    path = ds / name
    replace_line(path, line, content)
    with pytest.raises(InputError) as info:
        run(tmp_path, batch_rows=batch_rows)
    err, message = info.value, str(info.value)
    assert err.path == str(path) and err.line == line
    assert f"{name}:{line}: " in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert_nothing_written(tmp_path)


def test_earliest_duplicate_is_reported(tmp_path):
    ds = make_msmarco(tmp_path)
    replace_line(ds / "collection.tsv", 28, b"2\tthird copy")
    replace_line(ds / "collection.tsv", 20, b"11\tagain")
    replace_line(ds / "collection.tsv", 25, b"2\tagain")
    with pytest.raises(InputError, match=r"collection.tsv:20: duplicate passage id '11' \(first seen on line 12\)"):
        run(tmp_path, batch_rows=3)
    assert_nothing_written(tmp_path)


def test_empty_files(tmp_path):
    ds = make_msmarco(tmp_path)
    (ds / "qrels.dev.small.tsv").write_text("\n\n")
    with pytest.raises(InputError, match="qrels.dev.small.tsv: qrels file holds no judgements"):
        run(tmp_path)
    (ds / "collection.tsv").write_text("1\t \n")
    with pytest.warns(UserWarning), pytest.raises(InputError, match="collection.tsv: collection holds no passages"):
        run(tmp_path, splits=["dl20"])
    assert_nothing_written(tmp_path)


def test_existing_artifacts_survive_a_failed_run(tmp_path):
    ds = make_msmarco(tmp_path)
    run(tmp_path)
    before = [p.read_bytes() for p in outputs(tmp_path).values()]
    replace_line(ds / "collection.tsv", 30, b"3\tduplicate")
    with pytest.raises(InputError, match="collection.tsv:30"):
        run(tmp_path, splits=["train"])
    assert [p.read_bytes() for p in outputs(tmp_path).values()] == before
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["corpus.parquet", "qrels.parquet",
                                                                    "queries.parquet"]


# --- configuration ------------------------------------------------------------------------------

def test_configuration_mistakes_name_the_key(tmp_path):
    ds = make_msmarco(tmp_path)
    with pytest.raises(ValueError, match=r"split 'test' has no queries file: set `files.queries.test`"):
        run(tmp_path, splits=["train", "test"])
    with pytest.raises(ValueError, match=r"`files.qrels.extra` has no queries file"):
        run(tmp_path, files={**FILES, "qrels": {**FILES["qrels"], "extra": "x.tsv"}})
    with pytest.raises(ValueError, match="needs `files`"):
        run(tmp_path, files=None)
    with pytest.raises(ValueError, match="unknown key.*corpus"):
        run(tmp_path, files={**FILES, "corpus": "x"})
    with pytest.raises(ValueError, match="batch_rows must be positive"):
        run(tmp_path, batch_rows=0)
    (ds / "qrels.train.tsv").unlink()
    with pytest.raises(InputError, match=r"qrels.train.tsv: qrels file of split 'train' \(`files.qrels.train`\) "
                                         r"does not exist"):
        run(tmp_path)
    with pytest.raises(InputError, match="data directory .* does not exist"):
        prepare(tmp_path / "nowhere", "msmarco", ["train"], **outputs(tmp_path), format="msmarco", files=FILES)
    assert_nothing_written(tmp_path)
