"""The teacher families in one table: which kind each scores, which module loads it, and what
settings of its own it takes. Loading, ``"auto"`` detection and the cache identity go through it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from .. import runtime
from ..errors import SettingError
from . import fused, instruct, rerankers
from .base import DEFAULT_MAX_LENGTH, META_FILE, _locate, _model_type, read_meta, scoring_precision
from .fused import FusionPairwiseScorer, FusionScorer
from .rerankers import PairwiseScorer, PointwiseScorer


@dataclass(frozen=True)
class Family:
    kind: str  # "pointwise" or "pairwise"
    module: ModuleType  # its load(path, family, kind, max_length, dev, batch_size, precision, **settings)
    fitted: bool = False  # loads only from a fitted teacher directory of this family (META_FILE)
    settings: tuple[str, ...] = ()  # settings of its own (teachers.<kind>.<name>), checked by module.settings


FAMILIES = {
    "cross-encoder": Family("pointwise", rerankers),
    "monot5": Family("pointwise", rerankers),
    "fusion": Family("pointwise", fused, fitted=True),
    "instruct-pointwise": Family("pointwise", instruct, settings=("prompt", "labels")),
    "bert-pairwise": Family("pairwise", rerankers),
    "duot5": Family("pairwise", rerankers),
    "fusion-pairwise": Family("pairwise", fused, fitted=True),
    "instruct-pairwise": Family("pairwise", instruct, settings=("prompt", "labels")),
}
POINTWISE_FAMILIES = tuple(name for name, f in FAMILIES.items() if f.kind == "pointwise")
PAIRWISE_FAMILIES = tuple(name for name, f in FAMILIES.items() if f.kind == "pairwise")
FUSION_FAMILIES = tuple(name for name, f in FAMILIES.items() if f.fitted)  # fitted feature fusions (teachers.fusion)


def detect_family(path: str, kind: str) -> str:
    """The family of the model at ``path`` for ``kind`` ("pointwise" or "pairwise")."""
    meta = read_meta(path)
    if meta is not None:
        if meta.get("kind") != kind:
            raise ValueError(f"{path}: a {meta.get('kind')} teacher, not a {kind} one ({META_FILE})")
        return meta["family"]
    if not (Path(path) / "config.json").exists() and Path(path).is_dir():
        raise ValueError(f"{path}: neither a transformers model (no config.json) nor a fitted teacher ({META_FILE})")
    is_t5 = _model_type(path) == "t5"
    if kind == "pointwise":
        return "monot5" if is_t5 else "cross-encoder"
    return "duot5" if is_t5 else "bert-pairwise"


def _resolve(model: str, family: str, kind: str, max_length: int | None):
    """(path, family, max_length) for a model setting, honouring the teacher metadata."""
    path = _locate(model)
    if family == "auto":
        family = detect_family(path, kind)
    allowed = POINTWISE_FAMILIES if kind == "pointwise" else PAIRWISE_FAMILIES
    if family not in allowed:
        raise ValueError(f"unknown {kind} family {family!r}; expected one of {allowed} or 'auto'")
    if family in FUSION_FAMILIES:
        meta = read_meta(path)
        if meta is None or meta.get("family") != family:
            raise ValueError(f"{path}: family {family!r} needs a fitted {family} teacher directory ({META_FILE})")
    if max_length is None:
        meta = read_meta(path) or {}
        max_length = int(meta.get("max_length", DEFAULT_MAX_LENGTH[kind]))
    return path, family, max_length


def family_settings(family: str, kind: str, **given) -> dict:
    """The settings of its own a family scores with (instruct: prompt and labels), defaults filled
    in and checked; a setting the family does not take is a SettingError naming its key."""
    f = FAMILIES[family]
    given = {k: v for k, v in given.items() if v is not None}
    for name in given:
        if name not in f.settings:
            takers = [n for n, g in FAMILIES.items() if name in g.settings and g.kind == kind]
            raise SettingError(f"teachers.{kind}.{name}: family {family!r} takes no {name} (only {', '.join(takers)})")
    return f.module.settings(kind, **given) if f.settings else {}


def identity(model: str, family: str, kind: str, max_length: int | None, precision: str = "fp32", *,
             prompt: str | None = None, labels=None) -> str:
    """Which teacher produced a score, as a JSON string stored with the scores: family, token
    budget, the model's :func:`runtime.model_fingerprint`, the family's own settings (an instruction
    teacher's prompt and label words) and, unless fp32, the dtype it scores in on this job's device
    (:func:`scoring_precision`). A score is reused from an earlier iteration's file only when this
    matches exactly."""
    path, family, max_length = _resolve(model, family, kind, max_length)
    out = {"kind": kind, "family": family, "max_length": max_length, "fingerprint": runtime.model_fingerprint(path)}
    out.update(family_settings(family, kind, prompt=prompt, labels=labels))
    dtype = scoring_precision(precision, kind, family)
    if dtype != "fp32":
        out["precision"] = dtype
    from ..inference import pipeline

    if pipeline.active() and not family.startswith("instruct"):  # instruct-*: torch always
        out["inference"] = pipeline.active()  # scored on another backend: not today's scores
    return json.dumps(out, sort_keys=True)


def _load(kind: str, model: str, family: str, max_length: int | None, device: str, batch_size: int,
          precision: str, options: dict):
    path, family, max_length = _resolve(model, family, kind, max_length)
    own = family_settings(family, kind, **options)
    dev = runtime.device(device)
    return FAMILIES[family].module.load(path, family, kind, max_length, dev, batch_size, precision, **own)


def load_pointwise(model: str, family: str = "auto", max_length: int | None = None,
                   device: str = "auto", batch_size: int = 32, precision: str = "fp32", *,
                   prompt: str | None = None, labels=None) -> PointwiseScorer | FusionScorer:
    """Load a pointwise teacher. ``max_length`` defaults to the fitted value, else 256.

    ``model`` is a path, a cached hub id or ``"minilm"``; a missing one raises FileNotFoundError.
    ``prompt`` and ``labels``: the ``instruct-pointwise`` family's template and label words
    (None: its defaults); another family given one is a SettingError.
    """
    return _load("pointwise", model, family, max_length, device, batch_size, precision,
                 {"prompt": prompt, "labels": labels})


def load_pairwise(model: str, family: str = "auto", max_length: int | None = None,
                  device: str = "auto", batch_size: int = 16, precision: str = "fp32", *,
                  prompt: str | None = None, labels=None) -> PairwiseScorer | FusionPairwiseScorer:
    """Load a pairwise teacher. ``max_length`` defaults to the fitted value, else 320.
    ``prompt`` and ``labels`` as :func:`load_pointwise`'s, for ``instruct-pairwise``."""
    return _load("pairwise", model, family, max_length, device, batch_size, precision,
                 {"prompt": prompt, "labels": labels})
