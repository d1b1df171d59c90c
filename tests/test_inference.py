"""pairdistill.inference: every backend against eager torch fp32, on tiny random models.

fp32 backends (onnx, openvino) agree with torch within 1e-4; bf16 within bf16 rounding; int8
keeps the ranking: Spearman rank correlation of the scores above INT8_MIN_SPEARMAN = 0.9
(0.96 - 1.0 measured on these random tiny models; 0.978 - 0.997 retrieval Spearman for
all-MiniLM-L6-v2 on SciFact, see inference_bench_draft). Exported artifacts are reused, rebuilt when the weights change or the
file is corrupted, and a missing backend is a one-line SettingError naming inference.backend.
"""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from pairdistill import inference
from pairdistill.errors import SettingError

INT8_MIN_SPEARMAN = 0.9
HAS_ORT = importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None
HAS_OV = importlib.util.find_spec("openvino") is not None
HAS_NNCF = importlib.util.find_spec("nncf") is not None

TEXTS = ["the cat sat on the mat", "a quick brown fox jumps over the lazy dog near the river bank",
         "proteins fold", "gene expression in human cells is regulated by many factors including "
         "transcription factors and chromatin state", "vitamin d", "aspirin reduces the risk of heart attack",
         "the moon orbits the earth", "bacteria resist antibiotics through several mechanisms"]
QUERIES = ["cat on a mat", "heart attack risk", "antibiotic resistance", "protein folding"]


def _backend_param(name):
    marks = []
    if name == "onnx" and not HAS_ORT:
        marks.append(pytest.mark.skip(reason="onnxruntime/onnx not installed"))
    if name == "openvino" and not HAS_OV:
        marks.append(pytest.mark.skip(reason="openvino not installed"))
    return pytest.param(name, marks=marks)


EXPORTED = [_backend_param("onnx"), _backend_param("openvino")]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("inference_cache")


def _batch(path, first, second=None, t5=False):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    enc = tok(first, second, padding=True, truncation=True, max_length=48, return_tensors="pt") if second \
        else tok(first, padding=True, truncation=True, max_length=48, return_tensors="pt")
    return {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


def _call(model, batch):
    return model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))


def _pooled(hidden, mask):
    m = mask.unsqueeze(-1).float()
    return torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1), dim=-1)


def _task_setup(task, tiny_bert_dir, tiny_cross_encoder_dir, tiny_t5_dir):
    if task == "encoder":
        return tiny_bert_dir, inference.load_encoder, _batch(tiny_bert_dir, TEXTS)
    if task == "classifier":
        qs = [QUERIES[i % len(QUERIES)] for i in range(len(TEXTS))]
        return tiny_cross_encoder_dir, inference.load_classifier, _batch(tiny_cross_encoder_dir, qs, TEXTS)
    prompts = [f"Query: {QUERIES[i % len(QUERIES)]} Document: {t} Relevant:" for i, t in enumerate(TEXTS)]
    return tiny_t5_dir, inference.load_t5_first_step, _batch(tiny_t5_dir, prompts)


@pytest.mark.parametrize("backend", EXPORTED)
@pytest.mark.parametrize("task", ["encoder", "classifier", "t5"])
def test_fp32_backends_equal_torch(task, backend, cache_dir, tiny_bert_dir, tiny_cross_encoder_dir, tiny_t5_dir):
    path, load, batch = _task_setup(task, tiny_bert_dir, tiny_cross_encoder_dir, tiny_t5_dir)
    ref = _call(load(path, backend="torch"), batch)
    model = load(path, backend=backend, cache_dir=cache_dir, threads=2)
    out = _call(model, batch)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    if task == "encoder":
        mask = batch["attention_mask"].bool()
        ref, out = ref[mask], out[mask]  # pad positions are never read
    assert float((out - ref).abs().max()) < 1e-4
    # batches of another size and length run on the same (dynamic-shape) graph
    small = {k: v[:3, :5] for k, v in batch.items()}
    small["attention_mask"] = torch.ones_like(small["attention_mask"])
    assert float((_call(model, small) - _call(load(path, backend="torch"), small)).abs().max()) < 1e-4


def _int8_agreement(task, path, load, batch, **options):
    ref_model, model = load(path, backend="torch"), load(path, **options)
    if task == "encoder":
        q = _batch(path, QUERIES)
        ref = _pooled(_call(ref_model, q), q["attention_mask"]) @ \
            _pooled(_call(ref_model, batch), batch["attention_mask"]).T
        got = _pooled(_call(model, q), q["attention_mask"]) @ _pooled(_call(model, batch), batch["attention_mask"]).T
        return float(np.mean([spearmanr(a, b).statistic for a, b in zip(ref.numpy(), got.numpy())]))
    ref, got = _call(ref_model, batch), _call(model, batch)
    if task == "t5":  # the scores monoT5 reads: logits of a few vocabulary entries, per row
        ref, got = ref[:, 3:40], got[:, 3:40]
    return float(spearmanr(ref.flatten().numpy(), got.flatten().numpy()).statistic)


@pytest.fixture(scope="module")
def spread_classifier_dir(tmp_path_factory, minilm_dir):
    """A tiny random cross-encoder initialised with std 0.2: the shared fixture's logits differ by
    ~1e-5 from pair to pair (std 0.02 init), below int8 rounding, so their order means nothing."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from pairdistill.synthetic import TINY_BERT

    out = tmp_path_factory.mktemp("spread_classifier")
    tok = AutoTokenizer.from_pretrained(minilm_dir)
    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, num_labels=1,
                                             initializer_range=0.2, **TINY_BERT)).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


@pytest.mark.parametrize("backend", ["torch"] + EXPORTED)
@pytest.mark.parametrize("task", ["encoder", "classifier", "t5"])
def test_int8_keeps_the_ranking(task, backend, cache_dir, tiny_bert_dir, spread_classifier_dir, tiny_t5_dir):
    if backend == "openvino" and not HAS_NNCF:
        pytest.skip("nncf not installed (openvino int8)")
    if backend == "openvino" and task == "t5":
        with pytest.raises(SettingError, match="inference.quantize: openvino int8 covers BERT-like"):
            inference.load_t5_first_step(tiny_t5_dir, backend="openvino", quantize="int8", calibration=[{}])
        return
    path, load, batch = _task_setup(task, tiny_bert_dir, spread_classifier_dir, tiny_t5_dir)
    if task == "classifier":  # every query with every text: 32 pairs
        batch = _batch(path, [q for q in QUERIES for _ in TEXTS], [t for _ in QUERIES for t in TEXTS])
    options = dict(backend=backend, quantize="int8", cache_dir=cache_dir, threads=2, verbose=False)
    if backend == "openvino":
        options["calibration"] = [{k: v[i:i + 2] for k, v in batch.items()} for i in range(0, len(TEXTS), 2)]
    rho = _int8_agreement(task, path, load, batch, **options)
    assert rho > INT8_MIN_SPEARMAN, rho


@pytest.mark.parametrize("backend", ["torch"] + EXPORTED)
def test_bf16_follows_fp32(backend, cache_dir, tiny_bert_dir):
    if backend == "openvino" and not inference.openvino_has_bf16():
        with pytest.raises(SettingError, match="inference.precision"):
            inference.check_backend("openvino", precision="bf16")
        pytest.skip("this CPU has no native bf16 (checked that it is refused)")
    batch = _batch(tiny_bert_dir, TEXTS)
    if backend == "onnx":
        with pytest.raises(SettingError, match="inference.precision"):
            inference.load_encoder(tiny_bert_dir, backend="onnx", precision="bf16", cache_dir=cache_dir)
        return
    ref = _call(inference.load_encoder(tiny_bert_dir), batch)
    out = _call(inference.load_encoder(tiny_bert_dir, backend=backend, precision="bf16", cache_dir=cache_dir), batch)
    mask = batch["attention_mask"].bool()
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out[mask].numpy(), ref[mask].numpy(), atol=0.05, rtol=0.05)


def _artifact_file(model) -> Path:
    return model.artifact / ("model.onnx" if model.backend == "onnx" else "model.bin")


@pytest.mark.skipif(not (HAS_OV or HAS_ORT), reason="neither openvino nor onnxruntime installed")
def test_cache_reused_rebuilt_on_new_weights_and_on_corruption(tmp_path, tiny_bert_dir):
    """The cache logic is the same for both exported backends: run it on the pinned one."""
    backend = "openvino" if HAS_OV else "onnx"
    from transformers import BertConfig, BertModel

    src = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, src)
    cache = tmp_path / "cache"
    batch = _batch(str(src), TEXTS)
    first = inference.load_encoder(str(src), backend=backend, cache_dir=cache, verbose=False)
    assert first.built and (first.artifact / "meta.json").is_file()
    stamp = _artifact_file(first).stat().st_mtime_ns

    again = inference.load_encoder(str(src), backend=backend, cache_dir=cache, verbose=False)
    assert not again.built and again.artifact == first.artifact
    assert _artifact_file(again).stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(_call(again, batch).numpy(), _call(first, batch).numpy())

    # new weights (same config): a new artifact, the stale one removed, outputs follow the weights
    torch.manual_seed(1)
    BertModel(BertConfig.from_pretrained(src)).save_pretrained(src)
    changed = inference.load_encoder(str(src), backend=backend, cache_dir=cache, verbose=False)
    assert changed.built and changed.artifact != first.artifact and not first.artifact.exists()
    ref = _call(inference.load_encoder(str(src)), batch)
    mask = batch["attention_mask"].bool()
    assert float((_call(changed, batch)[mask] - ref[mask]).abs().max()) < 1e-4

    # a corrupted exported file is rebuilt, never used
    f = _artifact_file(changed)
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    fixed = inference.load_encoder(str(src), backend=backend, cache_dir=cache, verbose=False)
    assert fixed.built and fixed.artifact == changed.artifact
    assert float((_call(fixed, batch)[mask] - ref[mask]).abs().max()) < 1e-4

    # a truncated meta.json (an interrupted copy, say) too; no temporary directory is left behind
    (fixed.artifact / "meta.json").write_text("{")
    assert inference.load_encoder(str(src), backend=backend, cache_dir=cache, verbose=False).built
    assert json.loads((fixed.artifact / "meta.json").read_text())["files"]
    assert [p.name for p in cache.iterdir()] == [fixed.artifact.name]


def test_missing_backend_is_a_setting_error(monkeypatch, tiny_bert_dir, tmp_path):
    monkeypatch.setattr(inference, "_missing", lambda module: module in ("openvino", "onnxruntime", "nncf"))
    for backend in ("onnx", "openvino"):
        with pytest.raises(SettingError, match=r"^inference\.backend: .*needs the package") as exc:
            inference.load_encoder(tiny_bert_dir, backend=backend, cache_dir=tmp_path)
        assert "\n" not in str(exc.value)
    with pytest.raises(SettingError, match="inference.backend"):
        inference.check_backend("onnxx")


def test_settings_checked_at_start_up():
    inference.check_backend("torch", "none", "cross-encoder", "cpu")
    inference.check_backend("torch", "none", "duot5", "cuda", precision="bf16")
    with pytest.raises(SettingError, match=r"^inference\.quantize: int8 is a CPU path") as exc:
        inference.check_backend("torch", "int8", "cross-encoder", "cuda")
    assert "\n" not in str(exc.value)
    with pytest.raises(SettingError, match="inference.backend"):
        inference.check_backend("onnx", "none", "encoder", "cuda")
    with pytest.raises(SettingError, match="inference.quantize"):
        inference.check_backend("torch", "int4")
    for backend, present in (("onnx", HAS_ORT), ("openvino", HAS_OV)):
        if present:
            with pytest.raises(SettingError, match=f"inference.backend: {backend} cannot run family 'instruct-pairwise'"):
                inference.check_backend(backend, "none", "instruct-pairwise", "cpu")
            inference.check_backend(backend, "none", "duot5", "cpu")
            inference.check_backend(backend, "none", "fusion-pairwise", "cpu")
    if HAS_ORT:
        inference.check_backend("onnx", "int8", "monot5", "cpu")


def test_auto_is_openvino_on_a_cpu_that_has_it_and_torch_elsewhere(monkeypatch):
    from pairdistill.inference import pipeline

    assert inference.resolve_backend("auto", "cuda") == "torch"
    assert inference.resolve_backend("openvino", "cuda") == "openvino"  # only auto is resolved
    assert inference.resolve_backend("auto", "cpu") == ("openvino" if HAS_OV else "torch")
    with pytest.raises(SettingError, match=r"^inference\.quantize: int8 is a CPU path"):
        inference.check_backend("auto", "int8", "cross-encoder", "cuda")
    inference.check_backend("auto", "none", "duot5", "cuda", precision="bf16")
    # a job under auto runs as the backend it stands for (its teacher-cache identity says which)
    with pipeline.use({"backend": "auto"}):
        assert pipeline.active() == (dict(pipeline.DEFAULT, backend="openvino") if HAS_OV else None)
    monkeypatch.setattr(inference, "_missing", lambda module: module == "openvino")
    assert inference.resolve_backend("auto", "cpu") == "torch"
    with pipeline.use({"backend": "auto"}):
        assert pipeline.active() is None  # eager torch, today's code byte for byte


@pytest.mark.skipif(not HAS_OV, reason="openvino not installed")
def test_openvino_int8_needs_calibration(tiny_bert_dir, tmp_path):
    with pytest.raises(SettingError, match="inference.quantize: openvino int8 is static"):
        inference.load_encoder(tiny_bert_dir, backend="openvino", quantize="int8", cache_dir=tmp_path)


def test_wrong_task_for_the_model(tiny_t5_dir, tiny_bert_dir):
    with pytest.raises(SettingError, match="not one for task"):
        inference.load_encoder(tiny_t5_dir)
    with pytest.raises(SettingError, match="not one for task"):
        inference.load_t5_first_step(tiny_bert_dir)
