"""Open-domain QA in DPR's files: passages and questions read as DPR reads them, answer matching
with DPR's and SQuAD's normalisation, Recall@k, and bad input stopping with one line."""

from __future__ import annotations

import unicodedata

import pandas as pd
import pytest

from pairdistill import answers, io
from pairdistill.answers import dpr_tokens, has_answer, squad_tokens
from pairdistill.errors import InputError
from pairdistill.loaders import qa

# as in DPR's psgs_w100.tsv: a header, tab-separated, fields with quotes CSV-quoted ("" inside)
PASSAGES = (
    'id\ttext\ttitle\n'
    '1\t"Aaron Aaron ( or ; ""Ahärôn"") is a prophet, the elder brother of Moses."\tAaron\n'
    '2\tBeatles for Sale is the fourth studio album by the English rock band.\tThe Beatles\n'
    '3\t"The largest city, New York City, lies in the U.S. state of New York;\nit spans two lines"\tNew York City\n'
    '4\tYorkshire is a historic county of northern England.\tYorkshire\n'
    '5\tWilliam Shakespeare wrote Hamlet around 1600.\tHamlet\n'
)
# as in nq-test.qa.csv / trivia-test.qa.csv: question, then a JSON or Python list of answers
QUESTIONS = (
    'who was the brother of moses\t["Aaron"]\n'
    "who recorded beatles for sale\t['The Beatles', \"Beatles\"]\n"
    'where is the statue of liberty\t["New York City", "NYC"]\n'
    'who wrote hamlet\t["Shakespeare", "William Shakespeare", "Shakespeare"]\n'
)


@pytest.fixture()
def files(tmp_path):
    (tmp_path / "psgs.tsv").write_text(PASSAGES, encoding="utf-8")
    (tmp_path / "test.qa.csv").write_text(QUESTIONS, encoding="utf-8")
    return tmp_path / "psgs.tsv", tmp_path / "test.qa.csv"


def test_passages_round_trip(files, tmp_path):
    stats = qa.write_passages(files[0], tmp_path / "out" / "corpus.parquet", batch_rows=2)
    corpus = io.read_table(tmp_path / "out" / "corpus.parquet", "corpus")
    assert stats == {"documents": 5, "skipped_empty": 0}
    assert corpus["doc_id"].tolist() == ["1", "2", "3", "4", "5"]
    assert corpus.loc[0, "text"] == 'Aaron Aaron ( or ; "Ahärôn") is a prophet, the elder brother of Moses.'
    assert corpus.loc[0, "title"] == "Aaron"
    assert corpus.loc[2, "text"].endswith("state of New York;\nit spans two lines")


def test_questions_round_trip(files, tmp_path):
    stats = qa.prepare_questions(files[1], "nq", tmp_path / "out" / "queries.parquet", tmp_path / "out" / "answers.parquet")
    queries = io.read_table(tmp_path / "out" / "queries.parquet", "queries")
    got = io.read_table(tmp_path / "out" / "answers.parquet", "answers")
    assert queries.values.tolist() == [["nq", "0", "who was the brother of moses"],
                                       ["nq", "1", "who recorded beatles for sale"],
                                       ["nq", "2", "where is the statue of liberty"], ["nq", "3", "who wrote hamlet"]]
    # a repeated answer string is one answer
    assert got.values.tolist() == [["0", "Aaron"], ["1", "The Beatles"], ["1", "Beatles"], ["2", "New York City"],
                                   ["2", "NYC"], ["3", "Shakespeare"], ["3", "William Shakespeare"]]
    assert stats == {"questions": 4, "answers": 7}


def test_dpr_and_squad_tokens():
    text = "The U.S. Army's 3.5-ton truck!"
    assert dpr_tokens(text) == ("the", "u", ".", "s", ".", "army", "'", "s", "3", ".", "5", "-", "ton", "truck", "!")
    assert squad_tokens(text) == ("us", "armys", "35ton", "truck")
    # NFD: the precomposed É and E + combining acute are one token
    assert dpr_tokens("CAF\u00c9") == dpr_tokens("Cafe\u0301") == (unicodedata.normalize("NFD", "café"),)


@pytest.mark.parametrize("answer, text, string, squad", [
    ("new york city", "New York City lies on the coast", True, True),        # case
    ("New York City", "the largest city, New York City, lies", True, True),  # an answer spanning tokens
    ("York City lies", "the largest city, New York City lies", True, True),  # any token run, not just words
    ("York", "Yorkshire is a historic county", False, False),                # a part of a token is no match
    ("The Beatles", "Beatles for Sale", False, True),                        # articles
    ("U.S.", "a state of the U.S. today", True, True),                       # punctuation
    ("US", "a state of the U.S. today", False, True),
    ("Paris", "London is the capital", False, False),                        # absent
    ("The", "the cat", True, False),                                         # SQuAD: normalised away, no match
    ("Café", "the CAFE\u0301 opened", True, False),                          # NFD (DPR only)
    ("Cafe", "the Café opened", False, False),                               # a mark is part of the word
])
def test_has_answer(answer, text, string, squad):
    assert has_answer([answer], text, "string") is string
    assert has_answer([answer], text, "squad") is squad
    assert has_answer(["nowhere", answer], text, "string") is string  # any of the answers


def _run(rows: dict[str, list[str]]) -> pd.DataFrame:
    return pd.DataFrame([{"query_id": q, "doc_id": d, "rank": r, "score": float(100 - r)}
                         for q, docs in rows.items() for r, d in enumerate(docs, start=1)])


def test_recall_at_k_by_hand():
    run = _run({"a": ["x", "y"], "b": ["x", "x2", "x3", "x4", "x5", "y"], "c": ["x"]})
    hits = run["doc_id"].eq("y").to_numpy()  # a: hit at rank 2; b: at rank 6; c: none; d: not retrieved
    assert answers.recall_at(run, hits, ["a", "b", "c", "d"], [1, 5, 6, 20]) == {1: 0.0, 5: 0.25, 6: 0.5, 20: 0.5}


def test_qa_metrics_match_the_passage_text_not_its_title(files, tmp_path):
    qa.write_passages(files[0], tmp_path / "corpus.parquet")
    qa.prepare_questions(files[1], "nq", tmp_path / "queries.parquet", tmp_path / "answers.parquet")
    run = _run({
        "0": ["2", "1"],            # Aaron in passage 1's text, rank 2
        "1": ["2", "4", "5"],       # "Beatles" in passage 2's text (and "The Beatles" its title): rank 1
        "2": ["4", "5", "1", "2"],  # New York City only in passage 3: never retrieved
        "3": ["1", "2", "3", "4", "5"],  # Shakespeare at rank 5
    })
    for match, expected in (("string", {"Recall@1": 0.25, "Recall@2": 0.5, "Recall@5": 0.75}),
                            ("squad", {"Recall@1": 0.25, "Recall@2": 0.5, "Recall@5": 0.75})):
        table = answers.qa_metrics(run, str(tmp_path / "corpus.parquet"), str(tmp_path / "answers.parquet"),
                                   ["0", "1", "2", "3"], [1, 2, 5], match=match, system="iteration 1", iteration=1,
                                   eval_set="qa/nq")
        assert dict(zip(table["measure"], table["value"])) == pytest.approx(expected)
        assert table["eval_set"].tolist() == ["qa/nq"] * 3 and table["iteration"].tolist() == [1] * 3
    # the title holds "The Beatles"; only a title match would find it
    hits = answers.answer_hits(_run({"1": ["2"]}), {"2": "Beatles for Sale is an album"}, {"1": ["The Beatles"]})
    assert hits.tolist() == [False]


@pytest.mark.parametrize("line, problem", [
    ("q\t'Paris'", "answers must be a list of strings, got str \"'Paris'\""),
    ("q\tParis", "answers 'Paris' are not a list literal"),
    ("q\t[]", "answers list is empty: the question cannot be scored"),
    ('q\t["Paris", 3]', "answer 2 is not a string (got int 3)"),
    ('q\t["Paris", " "]', "answer 2 is empty"),
    ('q\t["Paris"]\textra', "expected 2 fields (question, answers), got 3"),
    ('q', "expected 2 fields (question, answers), got 1"),
    ('\t["Paris"]', "query '1' has empty text"),
])
def test_a_bad_question_line_is_named_and_nothing_is_written(tmp_path, line, problem):
    path = tmp_path / "bad.qa.csv"
    path.write_text('first question\t["a"]\n' + line + '\nthird question\t["c"]\n')
    with pytest.raises(InputError) as err:
        qa.prepare_questions(path, "nq", tmp_path / "out" / "queries.parquet", tmp_path / "out" / "answers.parquet")
    assert str(err.value).startswith(f"{path}:2: {problem}")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("text, problem", [
    ("1\tno header\tTitle\n", "1: expected the header line `id<TAB>text<TAB>title` (DPR's psgs_w100.tsv), "
                              "got '1\\tno header\\tTitle'"),
    ("id\ttext\ttitle\n1\ta\tA\n2\tonly two fields\n", "3: expected 3 fields (id, text, title), got 2"),
    ("id\ttext\ttitle\n1\ta\tA\n2\tb\tB\n1\tc\tC\n", "4: duplicate passage id '1' (first seen on line 2)"),
    ("id\ttext\ttitle\n1 2\ta\tA\n", "2: passage id '1 2' contains whitespace"),
    ("id\ttext\ttitle\n", ": passages file holds no passages"),
    ("", ": passages file is empty"),
])
def test_bad_passages_are_named_and_nothing_is_written(tmp_path, text, problem):
    path = tmp_path / "psgs.tsv"
    path.write_text(text)
    with pytest.raises(InputError) as err:
        qa.write_passages(path, tmp_path / "out" / "corpus.parquet", batch_rows=2)
    expected = f"{path}:{problem}" if problem[0].isdigit() else f"{path}{problem}"
    assert str(err.value) == expected
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
