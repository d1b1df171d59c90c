"""The fitted feature fusions as teachers: ``fusion`` and ``fusion-pairwise`` (:mod:`pairdistill.teachers.fusion`)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .base import _check_lengths, _LoadedTeacher


class FusionScorer(_LoadedTeacher):
    """A fitted ``fusion`` teacher; ``model`` is its :class:`pairdistill.teachers.fusion.Features`, and
    ``score`` works as :class:`PointwiseScorer`'s. The bi-encoders keep their fitted token budget."""

    def score(self, queries: Sequence[str], docs: Sequence[str], progress_label: str | None = None) -> np.ndarray:
        _check_lengths(queries, docs)
        return self.model.score(list(queries), list(docs), progress_label)


class FusionPairwiseScorer(_LoadedTeacher):
    """A fitted ``fusion-pairwise`` teacher; ``model`` is its :class:`pairdistill.teachers.fusion.PairwiseFusion`."""

    def prob(self, queries, docs_a, docs_b, progress_label: str | None = None) -> np.ndarray:
        _check_lengths(queries, docs_a, docs_b)
        return self.model.prob(list(queries), list(docs_a), list(docs_b), progress_label)


def load(path: str, family: str, kind: str, max_length: int, dev: torch.device, batch_size: int,
         precision: str) -> FusionScorer | FusionPairwiseScorer:
    """The fitted fusion at ``path``; it always scores in fp32, so ``precision`` is not used."""
    if family == "fusion":
        from .fusion import Features

        return FusionScorer(Features(path, device=str(dev), batch_size=batch_size), None, family, max_length,
                            batch_size, dev, path)
    from .fusion import PairwiseFusion

    return FusionPairwiseScorer(PairwiseFusion(path, device=str(dev), batch_size=batch_size), None, family,
                                max_length, batch_size, dev, path)
