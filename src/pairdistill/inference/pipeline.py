"""The pipeline's side of the fast path: the ``inference`` settings a job runs under, and drop-in
modules for the places that encode or score without gradients.

A stage that encodes (index, retrieve, evaluate, the fusion teachers' embeddings, teacher
scoring) runs its body inside ``with use(settings):``; the encoders read :func:`active`, which is
None under the default (torch, none, fp32): then today's code runs unchanged, byte for byte. Under
any other setting they swap their Hugging Face forward for :class:`HiddenStates` (an encoder's
last hidden state), :class:`Classifier` or :class:`T5FirstStep` (a scorer's logits), built by
:func:`~pairdistill.inference.load_encoder` & co. with the artifacts cached under
``PAIRDISTILL_INFERENCE_CACHE``. Training (the student's, the bi-encoders' fine-tuning) never
reads these settings.
"""
from __future__ import annotations

import contextlib
from types import SimpleNamespace
from typing import Iterator, Mapping, Sequence

import torch

DEFAULT = {"backend": "torch", "quantize": "none", "precision": "fp32"}
CALIBRATION_BATCHES, CALIBRATION_BATCH = 8, 16  # openvino int8 (NNCF): texts of the job's own data
_active: list[dict] = [dict(DEFAULT)]


def settings(given: Mapping | None = None) -> dict:
    """The full settings: ``given``'s keys (None: unset) over the default."""
    return {**DEFAULT, **{k: v for k, v in (given or {}).items() if v is not None}}


def is_default(given: Mapping | None) -> bool:
    return settings(given) == DEFAULT


@contextlib.contextmanager
def use(given: Mapping | None) -> Iterator[dict]:
    """Run a stage's body under these settings (checked first: a one-line SettingError)."""
    from .. import runtime
    from . import check_backend, resolve_backend

    s = settings(given)
    device = runtime.device("auto")
    s["backend"] = resolve_backend(s["backend"], device)  # auto: the backend it stands for on this device
    if not is_default(s):
        check_backend(s["backend"], s["quantize"], device=device, precision=s["precision"])
    _active.append(s)
    try:
        yield s
    finally:
        _active.pop()


def active() -> dict | None:
    """The settings in force when not the default, else None (today's torch code runs)."""
    s = _active[-1]
    return None if s == DEFAULT else dict(s)


def identity_suffix() -> list:
    """What a teacher's cache identity gains under non-default settings (nothing by default)."""
    s = active()
    return [] if s is None else [{"inference": s}]


def calibration(batches: Sequence[Mapping]) -> list[dict] | None:
    """Input dicts for openvino int8, None for every other setting (torch and fp32 need none)."""
    s = active()
    if not s or s["backend"] != "openvino" or s["quantize"] != "int8":
        return None
    return [{k: v for k, v in b.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
            for b in batches]


def needs_calibration() -> bool:
    s = active()
    return bool(s) and s["backend"] == "openvino" and s["quantize"] == "int8"


def _options(device, calib) -> dict:
    s = active()
    assert s is not None
    return {**s, "device": device, "calibration": calib}


class _Output(tuple):
    """``(last_hidden_state,)`` that also answers ``.last_hidden_state`` (Hugging Face's output)."""

    @property
    def last_hidden_state(self) -> torch.Tensor:
        return self[0]


class HiddenStates(torch.nn.Module):
    """An exported encoder standing in for a Hugging Face ``AutoModel`` in inference:
    ``module(input_ids, attention_mask=...)[0]`` (and ``.last_hidden_state``) is the float32 last
    hidden state, on ``device`` (where the caller's next layer lives)."""

    def __init__(self, model, device: torch.device):
        super().__init__()
        self.fast, self.config, self.out_device = model, model.config, torch.device(device)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, **_) -> _Output:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return _Output((self.fast(input_ids, attention_mask, token_type_ids).to(self.out_device),))


def encoder(path: str, device: str | torch.device = "cpu", calib=None) -> HiddenStates | None:
    """The fast encoder of ``path`` under the active settings; None under the default."""
    if active() is None:
        return None
    from . import load_encoder

    dev = torch.device(device)
    return HiddenStates(load_encoder(str(path), **_options(dev, calib)), dev)


class _Scorer:
    """A classifier or T5 first step answering the calls teachers.rerankers makes of a model."""

    def __init__(self, model, t5: bool):
        self.fast, self.config, self.t5 = model, model.config, t5

    def __call__(self, input_ids, attention_mask, token_type_ids=None, decoder_input_ids=None, **_):
        out = self.fast(input_ids, attention_mask, token_type_ids).to(input_ids.device)
        return SimpleNamespace(logits=out[:, None, :] if self.t5 else out)


def scorer(path: str, t5: bool, device: str | torch.device = "cpu", calib=None) -> _Scorer | None:
    """A reranker's model (``model(**batch).logits``; T5: the first decoding step's logits as
    ``(B, 1, V)``) under the active settings; None under the default."""
    if active() is None:
        return None
    from . import load_classifier, load_t5_first_step

    load = load_t5_first_step if t5 else load_classifier
    return _Scorer(load(str(path), **_options(torch.device(device), calib)), t5)
