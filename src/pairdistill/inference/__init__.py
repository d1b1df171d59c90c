"""Inference-only forward passes of Hugging Face encoders, classifiers and T5 on a chosen backend.

The pipeline's encodings that need no gradient (a student's passage and query encodings, the
fusion teachers' bi-encoder embeddings, cross-encoder / BERT-pairwise scoring, monoT5 / duoT5
first-step logits) call one object::

    model = load_encoder(path, backend="openvino", precision="bf16", cache_dir=...)
    hidden = model(input_ids, attention_mask, token_type_ids)   # float32 torch.Tensor

Backends (``inference.backend``): ``torch`` (eager; the only one on a GPU), ``onnx`` (ONNX Runtime,
CPU execution provider, BERT graphs fused), ``openvino`` (OpenVINO CPU plugin) and ``auto`` (the
workflow's default: openvino on a CPU where it is installed, else torch; :func:`resolve_backend`).
``inference.quantize``: ``none`` or ``int8`` (torch: dynamic int8 Linear layers, per channel;
onnx: ONNX Runtime dynamic int8 MatMuls, per channel; openvino: NNCF static int8 from
calibration batches, BERT-like models only).
``inference.precision``: ``fp32`` or ``bf16`` (torch on CPU or GPU; openvino on a CPU with
native bf16). Exported files are cached artifacts (see :mod:`.cache`), built once per weights.

Inputs are int64 (batch, seq) tensors or arrays, padded per length-sorted batch by the caller;
outputs are float32 torch tensors on the CPU (on the model's device for torch).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch

from ..errors import SettingError
from . import cache as _cache
from . import export as _export

BACKENDS = ("torch", "onnx", "openvino")
AUTO = "auto"  # openvino on a CPU where it is installed, torch on a GPU or without it
QUANTIZE = ("none", "int8")
PRECISIONS = ("fp32", "bf16")
# families of the pipeline and the architecture each runs as
_T5_FAMILIES = ("monot5", "duot5", "t5")
_BERT_FAMILIES = ("encoder", "bert", "colbert", "dpr", "biencoder", "fusion", "cross-encoder",
                  "bert-pairwise", "classifier")
_PACKAGES = {"onnx": [("onnx", "onnx==1.23.2"), ("onnxruntime", "onnxruntime==1.31.1")],
             "openvino": [("openvino", "openvino==2026.4.1")]}
_NNCF = ("nncf", "nncf==3.4.0")


def default_cache_dir() -> Path:
    return Path(os.environ.get("PAIRDISTILL_INFERENCE_CACHE") or
                Path.home() / ".cache" / "pairdistill" / "inference")


def _missing(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is None


def _family_arch(family: str) -> str:
    f = family.lower()
    if f in _T5_FAMILIES or f.startswith("monot5") or f.startswith("duot5"):
        return "t5"
    if f in _BERT_FAMILIES or f.startswith("fusion"):
        return "bert"
    return "other"


def openvino_has_bf16() -> bool:
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def resolve_backend(backend: str, device: str | torch.device = "cpu") -> str:
    """``backend`` itself, or for ``auto`` the one it stands for on ``device``: openvino on a CPU
    where the package is installed (equal to eager torch within 1e-4 in fp32, 1.6-1.8x as fast),
    torch on a GPU (in bf16 where asked) or where openvino is missing."""
    if backend != AUTO:
        return backend
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    return "openvino" if dev.type == "cpu" and not _missing("openvino") else "torch"


def check_backend(backend: str, quantize: str = "none", family: str = "encoder",
                  device: str | torch.device = "cpu", precision: str = "fp32") -> None:
    """Raise a one-line SettingError naming the inference.* key this job cannot honour.

    For the workflow to call at start-up: an unknown or uninstalled backend, a backend that
    cannot run ``family`` (the exported backends run BERT-like encoders and classifiers and T5;
    instruction-tuned LLM teachers stay on torch), quantisation or a non-torch backend on a GPU
    (there the path is torch, in bf16 where the GPU has it), bf16 where the backend or CPU lacks it.
    ``auto`` is checked as the backend it stands for on ``device`` (:func:`resolve_backend`).
    """
    if backend not in BACKENDS + (AUTO,):
        raise SettingError(f"inference.backend: unknown backend {backend!r} "
                           f"(one of {', '.join(BACKENDS + (AUTO,))})")
    backend = resolve_backend(backend, device)
    if quantize not in QUANTIZE:
        raise SettingError(f"inference.quantize: unknown value {quantize!r} (one of {', '.join(QUANTIZE)})")
    if precision not in PRECISIONS:
        raise SettingError(f"inference.precision: unknown value {precision!r} (one of {', '.join(PRECISIONS)})")
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    if dev.type != "cpu":
        if quantize != "none":
            raise SettingError(f"inference.quantize: int8 is a CPU path; on {dev.type} set inference.quantize: none")
        if backend != "torch":
            raise SettingError(f"inference.backend: {backend} is a CPU path; on {dev.type} use torch")
        return
    if backend == "torch":
        if quantize == "int8" and precision != "fp32":
            raise SettingError("inference.precision: torch int8 runs its other ops in fp32; set fp32")
        return
    for module, pin in _PACKAGES[backend] + ([_NNCF] if backend == "openvino" and quantize == "int8" else []):
        if _missing(module):
            raise SettingError(f"inference.backend: {backend}{' int8' if module == 'nncf' else ''} needs the "
                               f"package {module} ({pin}), which is not installed")
    if _family_arch(family) == "other":
        raise SettingError(f"inference.backend: {backend} cannot run family {family!r} "
                           f"(exported: BERT-like encoders and classifiers, monot5, duot5); use torch")
    if backend == "openvino" and quantize == "int8" and _family_arch(family) == "t5":
        # NNCF 3.4's statistics for T5's graph fail (mismatched shapes); torch and onnx int8 run T5
        raise SettingError("inference.quantize: openvino int8 covers BERT-like models only; for "
                           f"{family} use inference.backend onnx or torch with int8")
    if precision == "bf16":
        if backend == "onnx":
            raise SettingError("inference.precision: bf16 is not an ONNX Runtime CPU path; use openvino or torch")
        if not openvino_has_bf16():
            raise SettingError("inference.precision: bf16 needs a CPU with native bf16 (AVX512-BF16 or AMX); "
                               "this one has none")
        if quantize == "int8":
            raise SettingError("inference.precision: openvino int8 runs its other ops in fp32; set fp32")


def _as_int64(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(x, dtype=np.int64)


class InferenceModel:
    """A loaded forward pass: ``model(input_ids, attention_mask, token_type_ids=None)``."""

    def __init__(self, task: str, backend: str, quantize: str, precision: str, config,
                 input_names: list[str], run, artifact: Path | None, built: bool, device: torch.device):
        self.task, self.backend, self.quantize, self.precision = task, backend, quantize, precision
        self.config, self.input_names, self._run = config, input_names, run
        self.artifact, self.built, self.device = artifact, built, device

    def __call__(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        if "token_type_ids" in self.input_names and token_type_ids is None:
            given["token_type_ids"] = (torch.zeros_like(input_ids) if isinstance(input_ids, torch.Tensor)
                                       else np.zeros_like(_as_int64(input_ids)))
        return self._run({n: given[n] for n in self.input_names})

    def __repr__(self) -> str:
        return (f"InferenceModel(task={self.task}, backend={self.backend}, quantize={self.quantize}, "
                f"precision={self.precision}, artifact={self.artifact})")


def _torch_runner(path: str, task: str, quantize: str, precision: str, device: torch.device):
    model = _export.load_torch(path, task)
    if quantize == "int8":
        # per output channel: on all-MiniLM-L6-v2 / SciFact retrieval Spearman 0.978 vs 0.941 per tensor
        qconfig = {torch.nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig}
        model = torch.ao.quantization.quantize_dynamic(model, qconfig, dtype=torch.qint8)
    elif precision == "bf16":
        model = model.to(torch.bfloat16)
    model = model.to(device)
    names = _export.input_names(model, task)
    fwd = _export.Forward(model, task, names)

    def run(inputs):
        with torch.inference_mode():
            args = [torch.as_tensor(_as_int64(inputs[n])).to(device) if not isinstance(inputs[n], torch.Tensor)
                    else inputs[n].to(device) for n in names]
            return fwd(*args).float()

    return model.config, names, run


def _ort_runner(model_file: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(model_file), so, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]

    def run(inputs):
        return torch.from_numpy(sess.run(None, {n: _as_int64(inputs[n]) for n in names})[0])

    return names, run


def _ov_runner(model_xml: Path, threads: int, precision: str):
    import openvino as ov

    core = ov.Core()
    # the CPU plugin runs in bf16 by default where the CPU has it: fp32 must be asked for
    cfg = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
           "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32"}
    compiled = core.compile_model(core.read_model(str(model_xml)), "CPU", cfg)
    request = compiled.create_infer_request()
    names = [i.get_any_name() for i in compiled.inputs]
    output = compiled.outputs[0]

    def run(inputs):
        res = request.infer({n: _as_int64(inputs[n]) for n in names})
        return torch.from_numpy(np.array(res[output], dtype=np.float32, copy=True))

    return names, run


def _calibration_digest(calibration) -> str:
    import hashlib

    h = hashlib.sha256()
    for batch in calibration:
        for k in sorted(batch):
            a = _as_int64(batch[k])
            h.update(k.encode() + str(a.shape).encode() + a.tobytes())
    return h.hexdigest()


def _check_export(run, names, path: str, task: str, quantize: str, precision: str) -> None:
    """The exported graph's output against eager torch fp32 on a small batch: a backend that
    cannot run the model correctly is an error at build time, never a silently wrong score."""
    ref_config, ref_names, ref = _torch_runner(path, task, "none", "fp32", torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, min(ref_config.vocab_size, 1000), (2, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    inputs = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    a = ref({n: inputs[n] for n in ref_names})
    b = run({n: inputs[n] for n in names})
    if task == "encoder":
        a, b = a[mask.bool()], b[mask.bool()]
    if not torch.isfinite(b).all():
        raise RuntimeError(f"inference: the exported {task} of {path} gives non-finite outputs")
    if quantize == "none" and precision == "fp32":
        err = float((a - b).abs().max())
        if err > 1e-3 * max(1.0, float(a.abs().max())):
            raise RuntimeError(f"inference: the exported {task} of {path} differs from torch by {err:.2e}")


def _load(path: str, task: str, *, backend: str = "torch", quantize: str = "none", precision: str = "fp32",
          device: str | torch.device = "cpu", cache_dir: str | Path | None = None, threads: int | None = None,
          calibration=None, verbose: bool = True) -> InferenceModel:
    path = str(path)
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    family = "t5" if task == "t5" else "encoder"
    check_backend(backend, quantize, family, dev, precision)
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    if (config.model_type == "t5") != (task == "t5"):
        raise SettingError(f"inference: {path} is a {config.model_type} model, not one for task {task!r}")
    if backend == "torch":
        config, names, run = _torch_runner(path, task, quantize, precision, dev)
        return InferenceModel(task, backend, quantize, precision, config, names, run, None, False, dev)
    if backend == "openvino" and quantize == "int8" and not calibration:
        raise SettingError("inference.quantize: openvino int8 is static: give calibration batches "
                           "(a few dozen padded input dicts from the data to encode)")
    threads = threads or torch.get_num_threads()
    libs = ["torch", "transformers"] + (["onnx", "onnxruntime"] if backend == "onnx" else ["openvino"])
    if backend == "openvino" and quantize == "int8":
        libs.append("nncf")
    identity = {"source_path": str(Path(path).resolve()), "source": _cache.fingerprint(path), "task": task,
                "backend": backend, "quantize": quantize, "versions": _cache.versions(libs)}
    if backend == "openvino" and quantize == "int8":
        identity["calibration"] = _calibration_digest(calibration)
    model_name = "model.onnx" if backend == "onnx" else "model.xml"

    def build(tmp: Path) -> None:
        if backend == "onnx":
            plain, fused = tmp / "plain.onnx", tmp / "fused.onnx"
            _export.export_onnx(path, task, plain)
            graph = fused if _export.fuse_for_ort(plain, fused, config) else plain
            if quantize == "int8":
                _export.quantize_ort(graph, tmp / model_name)
            else:
                os.replace(graph, tmp / model_name)
            for f in (plain, fused):
                f.unlink(missing_ok=True)
            check_names, check = _ort_runner(tmp / model_name, threads)
        else:
            calib = None
            if quantize == "int8":
                names = _export.input_names(_export.load_torch(path, task), task)
                calib = [{n: _as_int64(b[n]) if n in b else np.zeros_like(_as_int64(b["input_ids"]))
                          for n in names} for b in calibration]
            _export.convert_openvino(path, task, tmp / model_name, calib)
            check_names, check = _ov_runner(tmp / model_name, threads, "fp32")
        _check_export(check, check_names, path, task, quantize, "fp32")

    def log(msg: str) -> None:
        if verbose:
            print(msg, file=sys.stderr, flush=True)

    entry, built = _cache.get_or_build(cache_dir or default_cache_dir(), f"{task}-{backend}-{quantize}",
                                       identity, build, log=log)
    if built:
        log(f"inference: built {entry}")
    names, run = (_ort_runner(entry / model_name, threads) if backend == "onnx"
                  else _ov_runner(entry / model_name, threads, precision))
    return InferenceModel(task, backend, quantize, precision, config, names, run, entry, built, dev)


def load_encoder(path: str, **options) -> InferenceModel:
    """``model(input_ids, attention_mask, token_type_ids=None)`` -> last_hidden_state (B, L, H).

    Options: backend, quantize, precision, device, cache_dir, threads, calibration (openvino
    int8: a list of input dicts), verbose."""
    return _load(path, "encoder", **options)


def load_classifier(path: str, **options) -> InferenceModel:
    """Sequence-classification logits (B, num_labels): cross-encoders, BERT pairwise classifiers."""
    return _load(path, "classifier", **options)


def load_t5_first_step(path: str, **options) -> InferenceModel:
    """T5ForConditionalGeneration's first decoding step: vocabulary logits (B, V) (monoT5, duoT5)."""
    return _load(path, "t5", **options)


__all__ = ["BACKENDS", "QUANTIZE", "PRECISIONS", "InferenceModel", "check_backend", "default_cache_dir",
           "load_classifier", "load_encoder", "load_t5_first_step", "openvino_has_bf16"]

