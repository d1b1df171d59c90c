"""Exporting a Hugging Face model's inference forward pass to ONNX and to OpenVINO IR.

One graph per task, with int64 inputs ``input_ids``, ``attention_mask`` (and ``token_type_ids``
where the model takes them), batch and sequence dimensions dynamic:

* ``encoder``: last_hidden_state (batch, seq, hidden) of ``AutoModel``;
* ``classifier``: logits (batch, labels) of ``AutoModelForSequenceClassification``;
* ``t5``: vocabulary logits (batch, vocab) of the first decoding step of
  ``T5ForConditionalGeneration``, the decoder fed only its start token (monoT5 / duoT5 scoring).
"""
from __future__ import annotations

import inspect
from pathlib import Path

import torch

TASKS = ("encoder", "classifier", "t5")


def load_torch(path: str, task: str, attn: str | None = None):
    from transformers import AutoModel, AutoModelForSequenceClassification, T5ForConditionalGeneration

    cls = {"encoder": AutoModel, "classifier": AutoModelForSequenceClassification,
           "t5": T5ForConditionalGeneration}[task]
    kw = {"attn_implementation": attn} if attn else {}
    return cls.from_pretrained(path, **kw).eval()


def input_names(model, task: str) -> list[str]:
    names = ["input_ids", "attention_mask"]
    if task != "t5" and "token_type_ids" in inspect.signature(model.forward).parameters \
            and getattr(model.config, "type_vocab_size", 0):
        names.append("token_type_ids")
    return names


class Forward(torch.nn.Module):
    """The task's output tensor from positional int64 inputs, as one traceable module."""

    def __init__(self, model, task: str, names: list[str]):
        super().__init__()
        self.model, self.task, self.names = model, task, names
        if task == "t5":
            self.start = int(model.config.decoder_start_token_id)

    def forward(self, *inputs):
        kw = dict(zip(self.names, inputs))
        if self.task == "t5":
            dec = kw["input_ids"][:, :1] * 0 + self.start  # traced with a dynamic batch size
            return self.model(**kw, decoder_input_ids=dec, use_cache=False).logits[:, 0, :]
        out = self.model(**kw)
        return out.last_hidden_state if self.task == "encoder" else out.logits


def export_onnx(path: str, task: str, out_file: Path) -> list[str]:
    """Plain ONNX graph (opset 17, TorchScript exporter) of the task; returns its input names."""
    # eager attention exports as plain MatMul/Softmax, which ONNX Runtime fuses and OpenVINO reads
    model = load_torch(path, task, attn="eager")
    names = input_names(model, task)
    dummy = tuple(torch.ones(2, 8, dtype=torch.long) if n != "token_type_ids" else
                  torch.zeros(2, 8, dtype=torch.long) for n in names)
    out_axes = {0: "batch", 1: "seq"} if task == "encoder" else {0: "batch"}
    axes = {n: {0: "batch", 1: "seq"} for n in names} | {"output": out_axes}
    torch.onnx.export(Forward(model, task, names).eval(), dummy, str(out_file), input_names=names,
                      output_names=["output"], dynamic_axes=axes, opset_version=17, dynamo=False,
                      external_data=False)
    return names


def fuse_for_ort(onnx_file: Path, out_file: Path, config) -> bool:
    """ONNX Runtime's transformer fusions (Attention, LayerNorm, Gelu) for BERT-like encoders.

    Returns False (nothing written) for model types the BERT fusions do not cover."""
    if getattr(config, "model_type", "") not in ("bert", "roberta", "xlm-roberta", "electra"):
        return False
    from onnxruntime.transformers.optimizer import optimize_model

    opt = optimize_model(str(onnx_file), model_type="bert", num_heads=config.num_attention_heads,
                         hidden_size=config.hidden_size, opt_level=0)
    opt.save_model_to_file(str(out_file))
    return True


def quantize_ort(onnx_file: Path, out_file: Path) -> None:
    """Dynamic int8 (weights int8 per output channel, activations uint8 per batch) of MatMuls."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # fused graphs hold com.microsoft ops whose outputs ONNX shape inference cannot type
    quantize_dynamic(str(onnx_file), str(out_file), weight_type=QuantType.QInt8, per_channel=True,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})


def convert_openvino(path: str, task: str, out_xml: Path, calibration=None) -> list[str]:
    """OpenVINO IR (xml + bin, weights kept fp32) converted straight from torch (no ONNX, hence no
    protobuf); with ``calibration`` (a list of input dicts) statically int8-quantised by NNCF
    (SmoothQuant and fast bias correction included). Returns the input names."""
    import openvino as ov

    model = load_torch(path, task, attn="eager")
    names = input_names(model, task)
    example = {n: torch.ones(2, 8, dtype=torch.long) if n != "token_type_ids" else
               torch.zeros(2, 8, dtype=torch.long) for n in names}
    wrapped = Named(Forward(model, task, names).eval(), names)
    shapes = [(n, ov.PartialShape([-1, -1]), ov.Type.i64) for n in names]
    with torch.no_grad():
        ov_model = ov.convert_model(wrapped, example_input=example, input=shapes)
    for inp, n in zip(ov_model.inputs, names):
        inp.get_tensor().set_names({n})
    if calibration is not None:
        import nncf

        ov_model = nncf.quantize(ov_model, nncf.Dataset(list(calibration)), model_type=nncf.ModelType.TRANSFORMER,
                                 subset_size=max(1, len(calibration)))
    ov.save_model(ov_model, str(out_xml), compress_to_fp16=False)
    return names


class Named(torch.nn.Module):
    """Forward with keyword inputs (OpenVINO's torch frontend names the graph inputs after them)."""

    def __init__(self, fwd: Forward, names: list[str]):
        super().__init__()
        self.fwd, self.names = fwd, names

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        return self.fwd(*[given[n] for n in self.names])
