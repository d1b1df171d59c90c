"""Which pair terms should the fusion-pairwise teacher fit? (a benchmark, not a test)

On the judged pairs the fusion-pairwise fit uses (within ``--delta`` ranks in the pointwise
teacher's top ``--depth`` of its held-out *training* queries), five-fold cross-validation by query
of the pair accuracy of: the pointwise teacher's margin alone, and the pairwise teacher fitted with
each feature set of :func:`pairdistill.teachers.fusion.pair_features` and each ``--l2``. Each fitted teacher
is compared with the margin on the same pairs by a sign test over the pairs where they disagree::

    python -m pairdistill.bench pair-features --results results
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from .. import io, runtime
from ..teachers import fusion
from .student import show_table


def judged_pairs(teacher_dir: Path, results: Path, split: str, depth: int, delta: int):
    """(z_a, z_b, query index) of every judged pair of the held-out queries, as the fit draws them."""
    feats = fusion.Features(teacher_dir, device="cpu")
    queries = io.read_table(results / "data/queries.parquet", "queries")
    text = dict(zip(queries["query_id"], queries["text"]))
    qrels = io.read_table(results / "data/qrels.parquet", "qrels")
    qrels = qrels[(qrels["split"] == split) & (qrels["relevance"] > 0)]
    positives = qrels.groupby("query_id")["doc_id"].apply(set).to_dict()
    za, zb, group, held = fusion.heldout_judged_pairs(feats, text, positives, depth, delta)
    return za, zb, group, feats.weights, len(held)


def cross_validated(za, zb, group, weights, feature_set: str, l2: float, folds: int, seed: int) -> np.ndarray:
    """Per pair: is the pairwise teacher fitted on the other folds' queries right?"""
    fold = np.random.default_rng(seed).permutation(group.max() + 1) % folds
    right = np.zeros(len(za), dtype=bool)
    for f in range(folds):
        fit, held = fold[group] != f, fold[group] == f
        x = fusion.pair_features(np.concatenate([za[fit], zb[fit]]), np.concatenate([zb[fit], za[fit]]), weights,
                                 feature_set)
        t = np.r_[np.ones(fit.sum()), np.zeros(fit.sum())]
        v = fusion.fit_pair_logistic(x, t, l2=np.r_[0.0, np.full(x.shape[1] - 1, l2)])
        right[held] = fusion.pair_features(za[held], zb[held], weights, feature_set) @ v > 0
    return right


def main(argv=None) -> None:
    from scipy.stats import binomtest

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", default="results", help="a finished run's results directory")
    ap.add_argument("--split", default="train")
    ap.add_argument("--depth", type=int, default=30)
    ap.add_argument("--delta", type=int, default=10)
    ap.add_argument("--l2", type=float, nargs="+", default=[1e-3, 1e-2, 1e-1, 1.0])
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="write the table here (TSV) as well")
    a = ap.parse_args(argv)
    runtime.set_threads(a.threads)
    results = Path(a.results)
    za, zb, group, weights, n_queries = judged_pairs(results / "teachers/pointwise/model", results, a.split,
                                                     a.depth, a.delta)
    margin = (za - zb) @ weights > 0
    rows = [{"teacher": "pointwise margin", "l2": np.nan, "pair_accuracy": margin.mean(), "wins": 0, "losses": 0,
             "p_sign": np.nan}]
    for feature_set in fusion.PAIR_FEATURE_SETS:
        for l2 in a.l2:
            right = cross_validated(za, zb, group, weights, feature_set, l2, a.folds, a.seed)
            wins, losses = int((right & ~margin).sum()), int((~right & margin).sum())
            rows.append({"teacher": f"pairwise, {feature_set}", "l2": l2, "pair_accuracy": right.mean(), "wins": wins,
                         "losses": losses, "p_sign": binomtest(wins, wins + losses).pvalue if wins + losses else np.nan})
    print(f"{len(za)} judged pairs of {n_queries} held-out {a.split} queries, {a.folds}-fold by query "
          "(wins/losses: pairs where only the pairwise teacher / only the margin is right)")
    show_table(rows, a.out)


if __name__ == "__main__":
    main()
