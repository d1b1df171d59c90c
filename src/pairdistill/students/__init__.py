"""Student kinds (``student.arch``): which one a checkpoint is, and the settings of each.

- ``colbert`` (the default): colbert-ai's multi-vector ColBERT, a PLAID index
  (:mod:`pairdistill.students.colbert`, training interface :class:`pairdistill.train.loop.ColBERTKind`);
- ``dpr``: a single-vector dual encoder, a faiss index (:mod:`pairdistill.students.dpr`), the
  paper's Table 3 "DPR" student.

Every stage after ``init-checkpoint`` reads the kind from the checkpoint directory itself (a DPR
checkpoint holds :data:`DPR_SETTINGS`), so retrieval, training and evaluation take no flag for
it. This module imports no torch: the workflow checks settings with it at start-up.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import SettingError

ARCHES = ("colbert", "dpr")
DPR_SETTINGS = "pairdistill_dpr.json"  # in a DPR checkpoint: its settings (and what marks it as one)
FAISS_META = "pairdistill_faiss.json"  # in a DPR student's (faiss) index: how it was built
POOLINGS = ("mean", "cls")
SCORES = ("dot", "cosine")
INDEX_TYPES = ("flat", "ivf")
# the defaults of student.dpr and index.dpr (config keys a config may leave out); scale None: 20
# with cosine (sentence-transformers' MultipleNegativesRankingLoss), 1 with dot
DPR_DEFAULTS = {"shared": True, "pooling": "mean", "score": "cosine", "scale": None}
DPR_INDEX_DEFAULTS = {"type": "flat", "nlist": 1024, "nprobe": 32}


def arch_of(checkpoint: str | Path) -> str:
    """``dpr`` for a directory holding :data:`DPR_SETTINGS`, else ``colbert`` (a ColBERT checkpoint,
    a plain encoder, a hub id)."""
    return "dpr" if (Path(checkpoint) / DPR_SETTINGS).is_file() else "colbert"


def default_scale(score: str) -> float:
    return 20.0 if score == "cosine" else 1.0


@dataclass(frozen=True)
class DPRSettings:
    """A DPR student: ``shared`` one encoder for queries and passages (else two), ``pooling`` of the
    last hidden states (``mean`` under the attention mask, or ``cls``), and its score
    ``scale * q.d`` (``dot``) or ``scale * cos(q, d)`` (``cosine``); tokens per query and passage."""
    shared: bool = True
    pooling: str = "mean"
    score: str = "cosine"
    scale: float = 20.0
    query_maxlen: int = 32
    doc_maxlen: int = 128

    def __post_init__(self):
        if not isinstance(self.shared, bool):
            raise SettingError(f"student.dpr.shared: expected true or false, got {self.shared!r}")
        if self.pooling not in POOLINGS:
            raise SettingError(f"student.dpr.pooling: {self.pooling!r} is not one of {', '.join(POOLINGS)}")
        if self.score not in SCORES:
            raise SettingError(f"student.dpr.score: {self.score!r} is not one of {', '.join(SCORES)}")
        if not isinstance(self.scale, (int, float)) or isinstance(self.scale, bool) or not self.scale > 0:
            raise SettingError(f"student.dpr.scale: must be a number > 0, got {self.scale!r}")
        for key in ("query_maxlen", "doc_maxlen"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise SettingError(f"student.{key}: must be an integer >= 1, got {value!r}")

    def to_json(self) -> dict:
        return {"arch": "dpr", **asdict(self)}

    @classmethod
    def from_config(cls, student: dict) -> "DPRSettings":
        """From config ``student`` (``student.dpr`` over :data:`DPR_DEFAULTS`)."""
        given = student.get("dpr") or {}
        unknown = sorted(set(given) - set(DPR_DEFAULTS))
        if unknown:
            raise SettingError(f"student.dpr.{unknown[0]}: unknown key (expected {', '.join(DPR_DEFAULTS)})")
        s = {**DPR_DEFAULTS, **given}
        if s["score"] not in SCORES:  # before default_scale reads it
            raise SettingError(f"student.dpr.score: {s['score']!r} is not one of {', '.join(SCORES)}")
        scale = default_scale(s["score"]) if s["scale"] is None else s["scale"]
        return cls(shared=s["shared"], pooling=s["pooling"], score=s["score"], scale=scale,
                   query_maxlen=student["query_maxlen"], doc_maxlen=student["doc_maxlen"])


def read_dpr_settings(checkpoint: str | Path) -> DPRSettings:
    path = Path(checkpoint) / DPR_SETTINGS
    meta = json.loads(path.read_text())
    if meta.get("arch") != "dpr":
        raise SettingError(f"{path}: not a DPR student's settings (arch {meta.get('arch')!r})")
    return DPRSettings(**{k: v for k, v in meta.items() if k != "arch"})


def index_settings(index: dict) -> dict:
    """Config ``index.dpr`` over :data:`DPR_INDEX_DEFAULTS`, checked: one line naming the key."""
    given = index.get("dpr") or {}
    unknown = sorted(set(given) - set(DPR_INDEX_DEFAULTS))
    if unknown:
        raise SettingError(f"index.dpr.{unknown[0]}: unknown key (expected {', '.join(DPR_INDEX_DEFAULTS)})")
    s = {**DPR_INDEX_DEFAULTS, **given}
    if s["type"] not in INDEX_TYPES:
        raise SettingError(f"index.dpr.type: {s['type']!r} is not one of {', '.join(INDEX_TYPES)}")
    for key in ("nlist", "nprobe"):
        if not isinstance(s[key], int) or isinstance(s[key], bool) or s[key] < 1:
            raise SettingError(f"index.dpr.{key}: must be an integer >= 1, got {s[key]!r}")
    if s["type"] == "ivf" and s["nprobe"] > s["nlist"]:
        raise SettingError(f"index.dpr.nprobe: {s['nprobe']} is more than index.dpr.nlist {s['nlist']}")
    return s


def check_config(config: dict) -> str:
    """The start-up checks of ``student.arch`` and its settings (one line naming the key); returns the arch."""
    arch = config["student"].get("arch", "colbert")
    if arch not in ARCHES:
        raise SettingError(f"student.arch: {arch!r} is not one of {', '.join(ARCHES)}")
    if arch == "dpr":
        DPRSettings.from_config(config["student"])
        index_settings(config["index"])
    return arch
