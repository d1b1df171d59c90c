"""LoTTE: the release's layout read into corpus, queries and qrels, Success@5 over its answer
passages, and bad input stopping with one line naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from pairdistill import evaluate, io
from pairdistill.errors import InputError
from pairdistill.loaders import lotte

PASSAGES = {0: "how to keep a cat off the table", 1: "cats like high places", 2: "a dog barks at night",
            3: "dogs and cats together", 4: "choosing a cat litter", 5: "feeding a puppy", 6: "the best dog food",
            7: "indoor plants safe for cats"}
SEARCH = {0: "cat on table", 1: "dog food", 2: "plants for cats"}
FORUM = {0: "my puppy will not eat", 1: "cats and dogs in one flat"}
# search qid 2 has two answers; forum shares qids 0 and 1 with search (each set counts from 0)
SEARCH_QAS = [{"qid": 0, "query": SEARCH[0], "answer_pids": [0, 1]}, {"qid": 1, "query": SEARCH[1], "answer_pids": [6]},
              {"qid": 2, "query": SEARCH[2], "answer_pids": [7, 4, 7], "url": "https://example.org/q/2"}]
FORUM_QAS = [{"qid": 0, "query": FORUM[0], "answer_pids": [5]}, {"qid": 1, "query": FORUM[1], "answer_pids": [3]}]


def write_topic(root: Path, topic: str = "pets", split: str = "test", *, passages=PASSAGES,
                sets=(("search", SEARCH, SEARCH_QAS), ("forum", FORUM, FORUM_QAS))) -> Path:
    """One LoTTE topic in the release's layout: collection.tsv, questions.<set>.tsv, qas.<set>.jsonl."""
    d = root / topic / split
    d.mkdir(parents=True, exist_ok=True)
    (d / "collection.tsv").write_text("".join(f"{pid}\t{text}\n" for pid, text in passages.items()))
    for name, questions, qas in sets:
        (d / f"questions.{name}.tsv").write_text("".join(f"{q}\t{t}\n" for q, t in questions.items()))
        (d / f"qas.{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in qas))
    return d


def _prepare(root: Path, out: Path, topic: str = "pets", query_sets=("search", "forum")) -> dict:
    return lotte.prepare(root, topic, "test", query_sets, out / "corpus.parquet", out / "queries.parquet",
                         out / "qrels.parquet")


def test_a_topic_round_trips(tmp_path):
    write_topic(tmp_path / "lotte")
    stats = _prepare(tmp_path / "lotte", tmp_path / "out")
    corpus = io.read_table(tmp_path / "out" / "corpus.parquet", "corpus")
    queries = io.read_table(tmp_path / "out" / "queries.parquet", "queries")
    qrels = io.read_table(tmp_path / "out" / "qrels.parquet", "qrels")
    assert dict(zip(corpus["doc_id"], corpus["text"])) == {str(k): v for k, v in PASSAGES.items()}
    assert set(corpus["title"]) == {""}
    assert queries.values.tolist() == ([["search", str(q), t] for q, t in SEARCH.items()]
                                      + [["forum", str(q), t] for q, t in FORUM.items()])
    # a pid listed twice is one answer passage
    assert sorted(map(tuple, qrels[["split", "query_id", "doc_id"]].values.tolist())) == sorted([
        ("search", "0", "0"), ("search", "0", "1"), ("search", "1", "6"), ("search", "2", "7"), ("search", "2", "4"),
        ("forum", "0", "5"), ("forum", "1", "3")])
    assert set(qrels["relevance"]) == {1}
    assert stats["questions"] == {"search": 3, "forum": 2} and stats["answer_passages"] == {"search": 5, "forum": 2}
    assert lotte.input_files(tmp_path / "lotte", "pets", "test", ["forum"]) == [
        str(tmp_path / "lotte" / "pets" / "test" / name)
        for name in ("collection.tsv", "questions.forum.tsv", "qas.forum.jsonl")]


def test_one_query_set_only(tmp_path):
    write_topic(tmp_path / "lotte")
    _prepare(tmp_path / "lotte", tmp_path / "out", query_sets=["forum"])
    assert set(io.read_table(tmp_path / "out" / "queries.parquet", "queries")["split"]) == {"forum"}
    assert set(io.read_table(tmp_path / "out" / "qrels.parquet", "qrels")["split"]) == {"forum"}


def _run(rows: dict[str, list[str]]) -> pd.DataFrame:
    """A run from each query's ranked doc ids (scores falling with rank)."""
    return pd.DataFrame([{"query_id": q, "doc_id": d, "rank": r, "score": float(100 - r)}
                         for q, docs in rows.items() for r, d in enumerate(docs, start=1)])


def test_success_at_5_over_the_answer_passages(tmp_path):
    write_topic(tmp_path / "lotte")
    _prepare(tmp_path / "lotte", tmp_path / "out")
    qrels = io.read_table(tmp_path / "out" / "qrels.parquet", "qrels")
    search = qrels[qrels["split"] == "search"]
    run = _run({
        "0": ["2", "3", "4", "5", "1", "0"],  # answer 1 at rank 5: a success (answer 0 at rank 6 adds nothing)
        "1": ["0", "1", "2", "3", "4", "6"],  # its only answer at rank 6: a miss
        # query 2 is not in the run: a miss
    })
    table = evaluate.metrics(run, search, ["Success@5", "Success@10"], system="iteration 0", iteration=0,
                             eval_set="lotte/pets/test/search")
    assert dict(zip(table["measure"], table["value"])) == pytest.approx({"Success@5": 1 / 3, "Success@10": 2 / 3})
    # forum qids are the same strings as search ones, but only the forum answers count for them
    forum = qrels[qrels["split"] == "forum"]
    run = _run({"0": ["5"], "1": ["6", "5", "0"]})  # forum 1's answer is passage 3, never retrieved
    value = evaluate.metrics(run, forum, ["Success@5"], system="s", iteration=None, eval_set="e")["value"]
    assert value.tolist() == [0.5]


@pytest.mark.parametrize("missing", ["collection.tsv", "questions.forum.tsv", "qas.search.jsonl"])
def test_a_missing_file_is_named(tmp_path, missing):
    d = write_topic(tmp_path / "lotte")
    (d / missing).unlink()
    with pytest.raises(InputError) as err:
        _prepare(tmp_path / "lotte", tmp_path / "out")
    assert err.value.path == str(d / missing) and "does not exist" in str(err.value)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_missing_topic_folder_is_named(tmp_path):
    write_topic(tmp_path / "lotte")
    with pytest.raises(InputError, match="LoTTE topic folder 'science' does not exist"):
        _prepare(tmp_path / "lotte", tmp_path / "out", topic="science")


@pytest.mark.parametrize("line, problem", [
    ({"qid": 1, "query": "dog food"}, "missing `answer_pids` field"),
    ({"query": "dog food", "answer_pids": [6]}, "missing `qid` field"),
    ({"qid": 1, "answer_pids": 6}, "`answer_pids` must be a list of passage ids, got 6"),
    ({"qid": 1, "answer_pids": []}, "`answer_pids` of qid '1' is empty: the question cannot be scored"),
    ({"qid": 1, "answer_pids": [6, True]}, "an answer pid must be a non-empty string or an integer, got true"),
    ({"qid": 9, "answer_pids": [6]}, "unknown qid '9' (not in questions.search.tsv)"),
    ({"qid": 0, "answer_pids": [6]}, "duplicate qid '0' (first seen on line 1)"),
    ({"qid": 1, "answer_pids": [6, 99]}, "unknown answer pid '99' (not in collection.tsv)"),
])
def test_a_bad_qas_line_is_named_and_nothing_is_written(tmp_path, line, problem):
    qas = [SEARCH_QAS[0], line, SEARCH_QAS[2]]
    d = write_topic(tmp_path / "lotte", sets=(("search", SEARCH, qas), ("forum", FORUM, FORUM_QAS)))
    with pytest.raises(InputError) as err:
        _prepare(tmp_path / "lotte", tmp_path / "out")
    assert str(err.value) == f"{d / 'qas.search.jsonl'}:2: {problem}"
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_bad_collection_line_is_named(tmp_path):
    d = write_topic(tmp_path / "lotte", passages={**PASSAGES, 3: "dogs and cats", "3 ": "again"})
    (d / "collection.tsv").write_text((d / "collection.tsv").read_text().replace("3 \t", "3\t"))
    with pytest.raises(InputError) as err:
        _prepare(tmp_path / "lotte", tmp_path / "out")
    assert str(err.value) == f"{d / 'collection.tsv'}:9: duplicate passage id '3' (first seen on line 4)"
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
