"""Loading and validating BEIR collections: the real files load, bad inputs fail with file:line."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest

from pairdistill import io
from pairdistill.data import input_files, passage_text, prepare
from pairdistill.loaders.beir import load_beir, load_corpus, load_qrels, load_queries
from pairdistill.errors import InputError

DATA_DIR = Path(os.environ.get("PAIRDISTILL_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "datasets"))
needs_data = pytest.mark.skipif(not (DATA_DIR / "scifact").is_dir(), reason=f"no datasets under {DATA_DIR}")


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def make_dataset(root: Path, corpus=None, queries=None, qrels=None, name: str = "toy") -> Path:
    """A small valid BEIR dataset under ``root/name``; pass lists/text to replace a file."""
    ds = root / name
    (ds / "qrels").mkdir(parents=True)
    write_jsonl(ds / "corpus.jsonl", corpus or [
        {"_id": "d1", "title": "Alpha", "text": "first doc"},
        {"_id": "d2", "title": "", "text": "second doc"},
        {"_id": 3, "title": "Gamma", "text": "third doc", "metadata": {}},
    ])
    write_jsonl(ds / "queries.jsonl", queries or [
        {"_id": "q1", "text": "alpha?", "metadata": {}},
        {"_id": "q2", "text": "beta?"},
        {"_id": "q3", "text": "unjudged"},
    ])
    (ds / "qrels" / "test.tsv").write_text(qrels or "query-id\tcorpus-id\tscore\nq2\td2\t1\nq1\td1\t2\nq1\t3\t0\n")
    return ds


@contextmanager
def raises_at(path: Path, line: int | None, *fragments: str):
    """Expect an InputError naming ``path``, ``line`` and every fragment."""
    with pytest.raises(InputError) as info:
        yield info
    err, message = info.value, str(info.value)
    assert err.path == str(path) and path.name in message
    assert err.line == line
    if line is not None:
        assert f"{path.name}:{line}: " in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


# --- real collections -------------------------------------------------------------------------

@needs_data
def test_scifact_loads_with_known_counts():
    corpus, queries, qrels, stats = load_beir(DATA_DIR, "scifact", ["train", "test"])
    assert len(corpus) == 5183 and list(corpus.columns) == ["doc_id", "title", "text"]
    assert stats["documents"] == 5183 and stats["skipped_empty"] == 0
    assert stats["queries"] == stats["labelled"] == {"train": 809, "test": 300}
    assert stats["qrels"] == {"train": 919, "test": 339}
    assert (qrels["split"] == "train").sum() == 919 and (qrels["split"] == "test").sum() == 339
    assert list(queries.columns) == ["split", "query_id", "text"]
    assert list(queries["split"]) == ["train"] * 809 + ["test"] * 300  # splits in the order requested
    for split in ("train", "test"):
        ids = list(queries.loc[queries["split"] == split, "query_id"])
        assert ids == sorted(ids)
        assert set(ids) == set(qrels.loc[qrels["split"] == split, "query_id"])
    assert qrels["relevance"].dtype == "int32"
    assert all(isinstance(v, str) for v in corpus["doc_id"])


@needs_data
def test_scifact_single_split_restricts_queries():
    _, queries, qrels, stats = load_beir(DATA_DIR, "scifact", "test")
    assert len(queries) == 300 and len(qrels) == 339 and set(qrels["split"]) == set(queries["split"]) == {"test"}


@needs_data
def test_msmarco_qrels_without_header_load():
    path = DATA_DIR / "msmarco-dl19-subset" / "qrels" / "test.tsv"
    qrels = load_qrels(path, "test")
    assert len(qrels) == 4102 and qrels["query_id"].nunique() == 43
    assert set(qrels["relevance"]) <= {1, 2, 3}
    _, queries, _, stats = load_beir(DATA_DIR, "msmarco-dl19-subset", ["test"])
    assert len(queries) == 43 and stats["documents"] == 5000


@needs_data
def test_scifact_qrels_header_and_line_ends_do_not_matter(tmp_path):
    original = DATA_DIR / "scifact" / "qrels" / "test.tsv"
    raw = original.read_bytes()
    assert raw.startswith(b"query-id\tcorpus-id\tscore\r\n")
    body = raw.split(b"\n", 1)[1]
    variants = {
        "crlf_header": raw,
        "lf_header": raw.replace(b"\r\n", b"\n"),
        "crlf_noheader": body,
        "lf_noheader": body.replace(b"\r\n", b"\n"),
        "spaces": body.replace(b"\r\n", b"\n").replace(b"\t", b"  "),
        "bom": b"\xef\xbb\xbf" + raw,
    }
    expected = load_qrels(original, "test")
    assert len(expected) == 339
    for name, data in variants.items():
        path = tmp_path / f"{name}.tsv"
        path.write_bytes(data)
        pd.testing.assert_frame_equal(load_qrels(path, "test"), expected, obj=name)


@needs_data
def test_cranfield_empty_documents_skipped_and_their_judgement_dropped():
    with pytest.warns(UserWarning) as record:
        corpus, _, qrels, stats = load_beir(DATA_DIR, "cranfield", ["test"])
    messages = [str(w.message) for w in record]
    assert any("corpus.jsonl:995" in m and "'995'" in m for m in messages)
    assert any("125/995" in m for m in messages)
    assert stats["skipped_empty"] == 2 and stats["documents"] == 1398 == len(corpus)
    assert stats["qrels_dropped_empty"] == {"test": 1}
    assert "995" not in set(qrels["doc_id"])


# --- formats ------------------------------------------------------------------------------------

def test_trec_four_column_qrels_equal_beir(tmp_path):
    beir = tmp_path / "beir.tsv"
    beir.write_text("q1\td1\t1\nq1\td2\t0\n")
    trec = tmp_path / "trec.txt"
    trec.write_text("q1 0 d1 1\n\nq1 Q0 d2 0\n")
    pd.testing.assert_frame_equal(load_qrels(trec, "test"), load_qrels(beir, "test"))


def test_corpus_numeric_id_bom_and_blank_lines(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"_id": 7, "title": "T", "text": "x"}).encode()
                     + b"\n\n" + json.dumps({"_id": "8", "text": "no title"}).encode() + b"\r\n")
    corpus, stats = load_corpus(path)
    assert list(corpus["doc_id"]) == ["7", "8"] and list(corpus["title"]) == ["T", ""]
    assert stats == {"documents": 2, "skipped_empty": 0}


def test_passage_text():
    assert passage_text("Title.", "Body text.") == "Title. Body text."
    assert passage_text("", "Body") == "Body"
    assert passage_text("  Title ", " Body ") == "Title Body"
    assert passage_text("Title", "") == "Title"


# --- bad inputs ---------------------------------------------------------------------------------

def test_duplicate_doc_id(tmp_path):
    path = write_jsonl(tmp_path / "corpus.jsonl", [
        {"_id": "a", "title": "", "text": "x"}, {"_id": "b", "title": "", "text": "y"},
        {"_id": "a", "title": "", "text": "z"},
    ])
    with raises_at(path, 3, "duplicate document id 'a'", "first seen on line 1"):
        load_corpus(path)


def test_numeric_and_string_id_collide(tmp_path):
    path = write_jsonl(tmp_path / "corpus.jsonl", [{"_id": 5, "text": "x"}, {"_id": "5", "text": "y"}])
    with raises_at(path, 2, "duplicate document id '5'"):
        load_corpus(path)


def test_duplicate_query_id(tmp_path):
    path = write_jsonl(tmp_path / "queries.jsonl", [{"_id": "q1", "text": "a"}, "", {"_id": "q1", "text": "b"}])
    with raises_at(path, 3, "duplicate query id 'q1'", "first seen on line 1"):
        load_queries(path)


def test_line_not_json(tmp_path):
    path = write_jsonl(tmp_path / "corpus.jsonl", [{"_id": "a", "text": "x"}, '{"_id": "b", "text": "y"'])
    with raises_at(path, 2, "not valid JSON"):
        load_corpus(path)


def test_line_json_but_not_object(tmp_path):
    path = write_jsonl(tmp_path / "queries.jsonl", [["q1", "text"]])
    with raises_at(path, 1, "not an object"):
        load_queries(path)


def test_missing_id_and_bad_field_types(tmp_path):
    path = write_jsonl(tmp_path / "corpus.jsonl", [{"_id": "a", "text": "x"}, {"title": "t", "text": "y"}])
    with raises_at(path, 2, "missing `_id`"):
        load_corpus(path)
    path = write_jsonl(tmp_path / "corpus2.jsonl", [{"_id": "a", "title": 3, "text": "x"}])
    with raises_at(path, 1, "`title` must be a string"):
        load_corpus(path)


def test_empty_document_skipped_with_warning(tmp_path):
    path = write_jsonl(tmp_path / "corpus.jsonl", [
        {"_id": "a", "title": "", "text": "x"}, {"_id": "empty", "title": " ", "text": "\n"},
        {"_id": "c", "title": "C", "text": ""},
    ])
    with pytest.warns(UserWarning) as record:
        corpus, stats = load_corpus(path)
    assert list(corpus["doc_id"]) == ["a", "c"]
    assert stats == {"documents": 2, "skipped_empty": 1}
    message = str(record[0].message)
    assert "corpus.jsonl:2" in message and "'empty'" in message


def test_empty_query_text(tmp_path):
    path = write_jsonl(tmp_path / "queries.jsonl", [{"_id": "q1", "text": "a"}, {"_id": "q2", "text": "  "}])
    with raises_at(path, 2, "empty text"):
        load_queries(path)


def test_qrels_non_integer_relevance(tmp_path):
    path = tmp_path / "test.tsv"
    path.write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t0.5\n")
    with raises_at(path, 3, "relevance '0.5' is not an integer"):
        load_qrels(path, "test")


def test_qrels_wrong_column_count(tmp_path):
    path = tmp_path / "test.tsv"
    path.write_text("q1\td1\t1\r\nq1\td2\r\n")
    with raises_at(path, 2, "expected 3 columns", "got 2"):
        load_qrels(path, "test")
    path.write_text("q1\td1\n")
    with raises_at(path, 1, "got 2"):
        load_qrels(path, "test")


def test_qrels_unknown_document_and_query(tmp_path):
    path = tmp_path / "test.tsv"
    path.write_text("q1\td1\t1\nq1\td9\t1\n")
    with raises_at(path, 2, "unknown document id 'd9'"):
        load_qrels(path, "test", query_ids={"q1"}, doc_ids={"d1"})
    path.write_text("q1\td1\t1\n\nq7\td1\t1\n")
    with raises_at(path, 3, "unknown query id 'q7'"):
        load_qrels(path, "test", query_ids={"q1"}, doc_ids={"d1"})


def test_qrels_duplicate_pair_and_empty_file(tmp_path):
    path = tmp_path / "test.tsv"
    path.write_text("q1\td1\t1\nq1\td2\t1\nq1\td1\t2\n")
    with raises_at(path, 3, "duplicate judgement", "first on line 1"):
        load_qrels(path, "test")
    path.write_text("query-id\tcorpus-id\tscore\n\n")
    with raises_at(path, None, "no judgements"):
        load_qrels(path, "test")


def test_load_beir_checks_qrels_against_ids(tmp_path):
    ds = make_dataset(tmp_path, qrels="q1\td1\t1\nq1\tnope\t1\n")
    with raises_at(ds / "qrels" / "test.tsv", 2, "unknown document id 'nope'"):
        load_beir(tmp_path, "toy", ["test"])


def test_missing_data_directory(tmp_path):
    missing = tmp_path / "nowhere"
    with raises_at(missing, None, "data directory", "does not exist", "data_dir", "PAIRDISTILL_DATA_DIR"):
        load_beir(missing, "scifact", ["test"])


def test_missing_dataset_and_split(tmp_path):
    make_dataset(tmp_path)
    with raises_at(tmp_path / "other", None, "dataset folder 'other' does not exist"):
        load_beir(tmp_path, "other", ["test"])
    with raises_at(tmp_path / "toy" / "qrels" / "dev.tsv", None, "split 'dev' does not exist", "available splits: test"):
        load_beir(tmp_path, "toy", ["test", "dev"])


# --- prepare ------------------------------------------------------------------------------------

def outputs(tmp_path: Path) -> dict[str, Path]:
    out = tmp_path / "out"
    return {"out_corpus": out / "corpus.parquet", "out_queries": out / "queries.parquet",
            "out_qrels": out / "qrels.parquet"}


def test_prepare_writes_typed_artifacts(tmp_path):
    make_dataset(tmp_path)
    paths = outputs(tmp_path)
    stats = prepare(tmp_path, "toy", ["test"], **paths)
    assert stats["documents"] == 3 and stats["queries"] == {"test": 2} and stats["qrels"] == {"test": 3}
    corpus = io.read_table(paths["out_corpus"], "corpus")
    queries = io.read_table(paths["out_queries"], "queries")
    qrels = io.read_table(paths["out_qrels"], "qrels")
    assert list(corpus["doc_id"]) == ["d1", "d2", "3"]
    assert list(queries.itertuples(index=False, name=None)) == [
        ("test", "q1", "alpha?"), ("test", "q2", "beta?")]  # q3 is unjudged; sorted by id
    assert list(qrels.itertuples(index=False, name=None)) == [
        ("test", "q2", "d2", 1), ("test", "q1", "d1", 2), ("test", "q1", "3", 0)]


def test_prepare_query_in_two_splits_has_a_row_in_each(tmp_path):
    ds = make_dataset(tmp_path)
    (ds / "qrels" / "train.tsv").write_text("q3\td1\t1\nq1\td2\t1\n")
    paths = outputs(tmp_path)
    stats = prepare(tmp_path, "toy", ["train", "test"], **paths)
    assert stats["queries"] == {"train": 2, "test": 2} and stats["qrels"] == {"train": 2, "test": 3}
    queries = io.read_table(paths["out_queries"], "queries")
    assert list(queries.itertuples(index=False, name=None)) == [
        ("train", "q1", "alpha?"), ("train", "q3", "unjudged"), ("test", "q1", "alpha?"), ("test", "q2", "beta?")]
    assert list(io.read_table(paths["out_qrels"], "qrels")["split"]) == ["train"] * 2 + ["test"] * 3


def test_splits_formats_and_files_are_checked(tmp_path):
    make_dataset(tmp_path)
    paths = outputs(tmp_path)
    with pytest.raises(ValueError, match="more than once: test"):
        prepare(tmp_path, "toy", ["test", "test"], **paths)
    with pytest.raises(ValueError, match="unknown dataset format 'trec'"):
        prepare(tmp_path, "toy", ["test"], **paths, format="trec")
    with pytest.raises(ValueError, match="not used with format 'beir'"):
        prepare(tmp_path, "toy", ["test"], **paths, files={"collection": "collection.tsv"})
    assert not (tmp_path / "out").exists()


def test_input_files_beir(tmp_path):
    root = tmp_path / "toy"
    assert input_files(tmp_path, "toy", "beir", None, ["train", "test"]) == [
        str(root / "corpus.jsonl"), str(root / "queries.jsonl"),
        str(root / "qrels" / "train.tsv"), str(root / "qrels" / "test.tsv")]


def test_prepare_writes_nothing_on_bad_input(tmp_path):
    make_dataset(tmp_path, qrels="q1\td1\t1\nq1\td2\tyes\n")
    paths = outputs(tmp_path)
    with pytest.raises(InputError, match="test.tsv:2"):
        prepare(tmp_path, "toy", ["test"], **paths)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
