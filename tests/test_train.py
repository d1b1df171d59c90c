"""Training groups, and the loop's MaxSim against colbert-ai's own scoring."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from pairdistill.train import build_groups
from pairdistill.train.loop import _maxsim, _maxsim_aligned


def _pointwise(qid, docs):
    n = len(docs)
    return pd.DataFrame({"query_id": qid, "doc_id": docs, "retriever_rank": range(1, n + 1),
                         "retriever_score": [float(n - i) for i in range(n)],
                         "teacher_score": [float(10 - i) for i in range(n)], "teacher_rank": range(1, n + 1)})


def _pairwise(rows):
    return pd.DataFrame(rows, columns=["query_id", "doc_a", "doc_b", "prob"])


def test_groups_put_the_positive_first_and_keep_pairs_inside_the_group():
    pw = _pointwise("q", ["d1", "d2", "d3", "d4", "d5", "d6"])
    pairs = _pairwise([("q", "d5", "d6", 0.8), ("q", "d2", "d3", 0.3)])
    groups, stats = build_groups(pw, pairs, {"q": {"d4"}}, nway=5, use_labels=True, seed=0)
    (g,) = groups
    assert g.doc_ids[0] == "d4" and g.positive_index == 0
    assert set(g.doc_ids) >= {"d2", "d3", "d5", "d6"}  # the pairs' documents come before filling
    assert len(g.doc_ids) == 5
    assert g.teacher_scores == [10.0 - int(d[1:]) + 1 for d in g.doc_ids]
    got = {(g.doc_ids[i], g.doc_ids[j], p) for i, j, p in g.pairs}
    assert got == {("d5", "d6", 0.8), ("d2", "d3", 0.3)}
    assert stats["groups"] == 1 and stats["pairs_in_groups"] == 2


def test_other_positives_are_left_out_and_unlabelled_queries_skipped():
    pw = pd.concat([_pointwise("q1", ["a", "b", "c", "d"]), _pointwise("q2", ["x", "y", "z"])])
    groups, stats = build_groups(pw, _pairwise([]), {"q1": {"a", "c"}}, nway=3, use_labels=True, seed=0)
    assert [g.doc_ids for g in groups] == [["a", "b", "d"]]
    assert stats["skipped_no_positive"] == 1


def test_zero_shot_groups_need_no_labels_and_short_lists_are_skipped():
    pw = pd.concat([_pointwise("q1", ["a", "b", "c"]), _pointwise("q2", ["x", "y"])])
    groups, stats = build_groups(pw, _pairwise([]), {}, nway=3, use_labels=False, seed=0)
    assert [g.query_id for g in groups] == ["q1"] and groups[0].positive_index is None
    assert stats["skipped_short_list"] == 1


def test_maxsim_matches_colbert_scoring():
    from pairdistill.students import colbert

    colbert.setup_colbert()
    from colbert.infra import ColBERTConfig
    from colbert.modeling.colbert import colbert_score

    torch.manual_seed(0)
    B, nway, Lq, Ld, dim = 2, 3, 4, 5, 8
    Q = torch.nn.functional.normalize(torch.randn(B, Lq, dim), dim=-1)
    D = torch.nn.functional.normalize(torch.randn(B * nway, Ld, dim), dim=-1)
    mask = torch.ones(B * nway, Ld, 1, dtype=torch.bool)
    mask[0, 3:] = False
    mask[4, 1:] = False
    expected = colbert_score(Q.repeat_interleave(nway, 0), D.clone(), mask, config=ColBERTConfig()).view(B, nway)
    assert torch.allclose(_maxsim_aligned(Q, D, mask, nway), expected, atol=1e-5)
    wide = _maxsim(Q, D, mask)
    assert wide.shape == (B, B * nway)
    assert torch.allclose(wide.view(B, B, nway)[torch.arange(B), torch.arange(B)], expected, atol=1e-5)


def test_unlabelled_queries_are_kept_with_the_teachers_list():
    pw = pd.concat([_pointwise("q1", ["a", "b", "c", "d"]), _pointwise("q2", ["v", "w", "x", "y", "z"])])
    pairs = _pairwise([("q2", "y", "z", 0.6), ("q1", "b", "d", 0.9)])
    groups, stats = build_groups(pw, pairs, {"q1": {"a", "c"}}, nway=3, use_labels=True, seed=0,
                                 unlabelled_queries=True)
    q1, q2 = groups
    assert q1.doc_ids == ["a", "b", "d"] and q1.positive_index == 0  # the labelled query as before
    # the unlabelled one: no positive; the pairs' passages first, then the teacher's best
    assert q2.query_id == "q2" and q2.positive_index == -1
    assert q2.doc_ids == ["y", "z", "v"] and q2.teacher_scores == [7.0, 6.0, 10.0]
    assert q2.pairs == [(0, 1, pytest.approx(0.6))]
    assert stats["unlabelled_groups"] == 1 and stats["skipped_no_positive"] == 0 and stats["groups"] == 2
    # default: skipped, as before
    groups, stats = build_groups(pw, pairs, {"q1": {"a", "c"}}, nway=3, use_labels=True, seed=0)
    assert [g.query_id for g in groups] == ["q1"] and stats["skipped_no_positive"] == 1
    assert stats["unlabelled_groups"] == 0
    # without labels the option changes nothing: every group has positive_index None
    groups, _ = build_groups(pw, pairs, {"q1": {"a", "c"}}, nway=3, use_labels=False, seed=0,
                             unlabelled_queries=True)
    assert [g.positive_index for g in groups] == [None, None]


def test_train_refuses_label_mode_groups_without_positive_index(tmp_path):
    from pairdistill.train import Group, train

    with pytest.raises(ValueError, match="positive_index"):
        train("unused", tmp_path / "c", tmp_path / "l", corpus_texts={}, query_texts={},
              groups=[Group("q", ["a"], [1.0], None)], nway=1, batch_size=1, epochs=1, max_steps=None, lr=1e-3,
              warmup=0.0, weight_decay=0.0, lambda_kd=1.0, lambda_pair=1.0, temperature=1.0, use_labels=True,
              in_batch_negatives=False, query_maxlen=8, doc_maxlen=8, seed=0)
