"""Teacher rerankers: pointwise scores and pairwise preferences, plus fitting a small default.

Two kinds of teacher feed the distillation:

* a **pointwise** reranker scores one (query, passage) pair: :func:`load_pointwise` returns a
  :class:`PointwiseScorer` whose ``score`` gives one float per pair (higher = more relevant);
* a **pairwise** reranker compares two passages for a query: :func:`load_pairwise` returns a
  :class:`PairwiseScorer` whose ``prob`` gives P(doc_a more relevant than doc_b | query).

Families (the ``family`` argument; ``"auto"`` picks one from the model directory):

=================  ==========================================================================
``cross-encoder``  sequence classifier on ``[CLS] q [SEP] d [SEP]`` (ms-marco-MiniLM-L-6-v2)
``monot5``         T5, ``Query: q Document: d Relevant:`` -> log P(true) over {true, false}
``bert-pairwise``  sequence classifier on ``[CLS] q [SEP] a [SEP] b [SEP]`` -> sigmoid(logit)
``duot5``          T5, ``Query: q Document0: a Document1: b Relevant:`` -> P(true)
``fusion``         BM25 and bi-encoder cosines, z-normalised per query, fused with fitted
                   weights (:mod:`pairdistill.teachers.fusion`)
``fusion-pairwise``  sigmoid of the fusion's margin plus fitted pair terms (:mod:`pairdistill.teachers.fusion`)
``instruct-pointwise``  a prompted seq2seq or causal LM (flan-t5-xl in the paper): "is the passage
                   relevant?" -> log P(yes) over {yes, no} (:mod:`.instruct`; never ``"auto"``)
``instruct-pairwise``  the same, "which document is more relevant? Answer only 'A' or 'B'." -> P(A)
=================  ==========================================================================

No MS MARCO reranker can be installed offline, so :func:`fit_pointwise` and
:func:`fit_pairwise` fine-tune a teacher from a local encoder (MiniLM by default) on
``(query, positive, negatives)`` groups; the result is a model directory with a
``pairdistill_teacher.json`` that ``"auto"`` reads back.

All scores are float32 numpy arrays in input order. Inputs are batched by token length (much
less padding, which dominates CPU time) and put back in order afterwards.

Modules: :mod:`.registry` (the families, loading, ``"auto"``, the cache identity), :mod:`.base`
(what the families share), :mod:`.rerankers`, :mod:`.fused` and :mod:`.instruct` (one per family
kind), :mod:`.fit` (fitting). The names callers used from the former ``teachers.py`` are here.
"""

from __future__ import annotations

from .base import DEFAULT_MAX_LENGTH, META_FILE, QUERY_SHARE, load_tokenizer, read_meta, scoring_precision
from .fit import Group, _init_classifier, fit_pairwise, fit_pointwise
from .fused import FusionPairwiseScorer, FusionScorer
from .instruct import InstructPairwiseScorer, InstructPointwiseScorer
from .registry import (FAMILIES, FUSION_FAMILIES, PAIRWISE_FAMILIES, POINTWISE_FAMILIES, detect_family,
                       family_settings, identity, load_pairwise, load_pointwise)
from .rerankers import (DUOT5_TEMPLATE, MONOT5_TEMPLATE, PairwiseScorer, PointwiseScorer, encode_bert_pairwise,
                        encode_cross, encode_duot5, encode_monot5, true_false_ids)

__all__ = ["DEFAULT_MAX_LENGTH", "DUOT5_TEMPLATE", "FAMILIES", "FUSION_FAMILIES", "META_FILE", "MONOT5_TEMPLATE",
           "PAIRWISE_FAMILIES", "POINTWISE_FAMILIES", "QUERY_SHARE", "FusionPairwiseScorer", "FusionScorer", "Group",
           "InstructPairwiseScorer", "InstructPointwiseScorer", "PairwiseScorer", "PointwiseScorer", "detect_family",
           "encode_bert_pairwise", "encode_cross", "encode_duot5", "encode_monot5", "family_settings", "fit_pairwise",
           "fit_pointwise", "identity", "load_pairwise", "load_pointwise", "load_tokenizer", "read_meta",
           "scoring_precision", "true_false_ids", "_init_classifier"]
