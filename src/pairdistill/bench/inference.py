"""Encoder inference per backend: tokens/s of MiniLM on 512 SciFact passages and agreement with torch fp32.

    python -m pairdistill.bench inference                          # every backend, 512 passages
    python -m pairdistill.bench inference --backends torch,openvino/bf16/none --passages 128

The passages are the first ``--passages`` of SciFact's corpus (title + " " + text), tokenized to
``--max-length`` (128) and run in length-sorted batches of ``--batch-size`` (32), each padded to its
own longest row (dynamic padding), in one process. Every backend, precision and quantisation that
:mod:`pairdistill.inference` offers (``backend/precision/quantize``: torch fp32 eager, torch bf16,
torch int8, openvino fp32 / bf16 / int8, onnx fp32 / int8) is loaded through it, as the pipeline
loads it; one that this machine cannot run (a package not installed, no native bf16) is a row with
``skipped`` and the one-line reason :func:`~pairdistill.inference.check_backend` gives.

Timing is interleaved per batch (A B C A B C ...) so that load from other processes falls on every
backend alike; a backend's time is, per batch, the best of ``--rounds`` rounds, summed. tokens/s
counts real (non-pad) tokens. Agreement with torch fp32: the max abs difference of the mean-pooled,
L2-normalised embedding, and the Spearman correlation, per query, of the dot-product scores of 50
SciFact test queries (encoded on the same backend) against the passages (mean and min over queries).
openvino int8 is calibrated (NNCF) on the next 512 passages of the corpus, never the measured ones.

The last line printed is one JSON object: ``ratio`` (tokens/s of the CPU default over torch fp32
eager), ``backend`` (the CPU default as backend/precision/quantize, from config.yaml's ``inference``
section; torch/fp32/none where it has none) and ``rows`` (the table). On a shared machine read the
ratios, not the absolute rates (``load_avg`` says what the machine was doing).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

SCIFACT = Path("/work/shared/datasets/scifact")
REPO = Path(__file__).resolve().parents[3]
REFERENCE = "torch/fp32/none"
# backend/precision/quantize, in the table's order
VARIANTS = ("torch/fp32/none", "torch/bf16/none", "torch/fp32/int8", "openvino/fp32/none",
            "openvino/bf16/none", "openvino/fp32/int8", "onnx/fp32/none", "onnx/fp32/int8")


# --------------------------------------------------------------------------------------------
# shared with teacher_throughput: data, settings, interleaved timing, environment
# --------------------------------------------------------------------------------------------

def read_jsonl(path: Path, limit: int | None = None) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            rows.append(json.loads(line))
            if limit is not None and len(rows) >= limit:
                break
    return rows


def passage_text(doc: dict) -> str:
    """A BEIR corpus line as the pipeline's models see it (:func:`pairdistill.data.passage_text`)."""
    from ..data import passage_text as joined

    return joined(doc.get("title") or "", doc["text"])


def test_queries(data: Path, n: int | None = None) -> list[tuple[str, str, list[str]]]:
    """(query id, text, judged doc ids) of the first ``n`` distinct queries of qrels/test.tsv."""
    text = {d["_id"]: d["text"] for d in read_jsonl(data / "queries.jsonl")}
    judged: dict[str, list[str]] = {}
    with open(data / "qrels" / "test.tsv", encoding="utf-8") as fh:
        next(fh)
        for line in fh:
            q, doc, score = line.rstrip("\n").split("\t")[:3]
            if int(score) > 0:
                judged.setdefault(q, []).append(doc)
    qids = list(judged)[:n] if n is not None else list(judged)
    return [(q, text[q], judged[q]) for q in qids]


def parse_variants(spec: str) -> list[str]:
    """``torch,openvino/bf16/none`` -> variants: a bare backend name stands for all its variants."""
    out = []
    for word in (w.strip() for w in spec.split(",") if w.strip()):
        if word == "all":
            found = list(VARIANTS)
        elif "/" in word:
            backend, precision, quantize = (word.split("/") + ["fp32", "none"])[:3]
            found = [f"{backend}/{precision}/{quantize}"]
        else:
            found = [v for v in VARIANTS if v.startswith(word + "/")]
            if not found:
                raise SystemExit(f"unknown backend {word!r} (one of: {', '.join(VARIANTS)})")
        out += [v for v in found if v not in out]
    return out


def split_variant(variant: str) -> dict:
    backend, precision, quantize = variant.split("/")
    return {"backend": backend, "precision": precision, "quantize": quantize}


def cpu_default(config: Path | None = None) -> tuple[str, str]:
    """The CPU default backend/precision/quantize: config.yaml's ``inference`` section, the
    schema's defaults for the keys it leaves out, torch/fp32/none where neither says; and where
    it was read from."""
    import yaml

    config = config or REPO / "config.yaml"
    section, schema_defaults = None, {}
    if config.exists():
        section = (yaml.safe_load(config.read_text()) or {}).get("inference")
    schema = REPO / "src" / "pairdistill" / "config.schema.yaml"
    if schema.exists():
        props = ((yaml.safe_load(schema.read_text()) or {}).get("properties") or {}).get("inference") or {}
        schema_defaults = {k: v["default"] for k, v in (props.get("properties") or {}).items()
                           if isinstance(v, dict) and "default" in v}
    if not section and not schema_defaults:
        return REFERENCE, f"{config.name} has no inference section: {REFERENCE}"
    s = {"backend": "torch", "precision": "fp32", "quantize": "none", **schema_defaults, **(section or {})}
    where = f"{config.name} inference section" if section else "config.schema.yaml inference defaults"
    return f"{s['backend']}/{s['precision']}/{s['quantize']}", where


def interleaved(runners: dict[str, Callable[[int], object]], n_steps: int, rounds: int,
                log: Callable[[str], None] | None = None) -> tuple[dict, dict]:
    """Run ``runner(step)`` for every step, runner after runner (A B C A B C ...), ``rounds``
    times after a warm-up of the first and last steps. Returns per runner its seconds as
    (rounds, steps) and its outputs of the first round, by step."""
    for run in runners.values():
        for step in {0, n_steps - 1}:
            run(step)
    seconds = {k: np.zeros((rounds, n_steps)) for k in runners}
    outputs: dict[str, list] = {k: [None] * n_steps for k in runners}
    for r in range(rounds):
        for step in range(n_steps):
            for name, run in runners.items():
                t = time.perf_counter()
                out = run(step)
                seconds[name][r, step] = time.perf_counter() - t
                if r == 0:
                    outputs[name][step] = out
        if log:
            log(f"round {r}: " + " ".join(f"{k}={v[r].sum():.2f}s" for k, v in seconds.items()))
    return seconds, outputs


def timing(seconds: np.ndarray, ref: np.ndarray) -> dict:
    """Best-of-rounds per step, summed, and the per-round totals, with the speed-ups over ``ref``."""
    best, ref_best = float(seconds.min(0).sum()), float(ref.min(0).sum())
    rounds, ref_rounds = seconds.sum(1), ref.sum(1)
    return {"seconds_best": best, "seconds_per_round": [round(float(x), 3) for x in rounds],
            "speedup_vs_reference": ref_best / best,
            "speedup_per_round": [round(float(a / b), 3) for a, b in zip(ref_rounds, rounds)]}


def environment(threads: int, extra: Sequence[str] = ()) -> dict:
    import torch

    env = {"python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
           "cores": os.cpu_count(), "threads": threads, "torch": torch.__version__}
    from importlib import metadata

    for pkg in ("transformers", "openvino", "nncf", "onnxruntime", "onnx", *extra):
        try:
            env[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:  # not installed: not in the list
            pass
    return env


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


# --------------------------------------------------------------------------------------------
# the encoder benchmark
# --------------------------------------------------------------------------------------------

def padded_batches(tokenizer, features: list[dict], batch_size: int) -> list[tuple[np.ndarray, dict]]:
    """Length-sorted batches, each padded to its own longest row: (row indices, int64 arrays)."""
    order = np.argsort(-np.array([len(f["input_ids"]) for f in features]), kind="stable")
    out = []
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        b = tokenizer.pad([features[i] for i in idx], return_tensors="np")
        out.append((idx, {k: v.astype(np.int64) for k, v in b.items()}))
    return out


def features(tokenizer, texts: Sequence[str], max_length: int) -> list[dict]:
    enc = tokenizer(list(texts), truncation=True, max_length=max_length)
    return [{k: enc[k][i] for k in enc.keys()} for i in range(len(texts))]


def pooled(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask[..., None].astype(np.float32)
    p = (hidden * m).sum(1) / np.clip(m.sum(1), 1, None)
    return p / np.linalg.norm(p, axis=-1, keepdims=True)


def embed(model, batches, n: int) -> np.ndarray:
    out = None
    for idx, b in batches:
        e = pooled(call(model, b), b["attention_mask"])
        out = np.zeros((n, e.shape[1]), np.float32) if out is None else out
        out[idx] = e
    return out


def call(model, b: dict) -> np.ndarray:
    return model(b["input_ids"], b["attention_mask"], b.get("token_type_ids")).float().numpy()


def load_variant(path: str, variant: str, cache_dir: Path, threads: int, calibration) -> object:
    """The encoder on this variant, or the one-line reason it cannot run here (a str)."""
    from .. import inference
    from ..errors import SettingError

    s = split_variant(variant)
    try:
        inference.check_backend(s["backend"], s["quantize"], "encoder", "cpu", s["precision"])
    except SettingError as exc:
        return str(exc)
    opts = dict(s, cache_dir=cache_dir, threads=threads)
    if s["backend"] == "openvino" and s["quantize"] == "int8":
        opts["calibration"] = calibration
    try:
        return inference.load_encoder(path, **opts)
    except Exception as exc:  # noqa: BLE001 - a backend that fails to build is a skipped row, said why
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def emit(result: dict, out: Path | None) -> int:
    """The benchmark's one JSON line: printed last (scripts read it), and written to ``out`` if given."""
    line = json.dumps(result)
    if out:
        out.write_text(line + "\n")
    print(line, flush=True)
    return 0


def show(rows: list[dict], rate: str = "tokens_per_s") -> None:
    print(f"{'backend':20} {rate:>13} {'x torch fp32':>12} {'max|dpool|':>10} {'rho_mean':>8} {'rho_min':>8}  skipped")
    for r in rows:
        if r.get("skipped"):
            print(f"{r['name']:20} {'-':>13} {'-':>12} {'-':>10} {'-':>8} {'-':>8}  {r['skipped']}")
            continue
        print(f"{r['name']:20} {r[rate]:13.1f} {r['speedup_vs_reference']:12.2f} {r['max_abs_diff_pooled']:10.2e} "
              f"{r['spearman_mean']:8.5f} {r['spearman_min']:8.5f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="minilm", help="encoder: a path or 'minilm' (default)")
    ap.add_argument("--data", type=Path, default=SCIFACT, help="a BEIR directory (default: SciFact)")
    ap.add_argument("--passages", type=int, default=512)
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--query-max-length", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--backends", default="all",
                    help="comma-separated backend[/precision/quantize] (a bare backend: all its variants); "
                         f"{REFERENCE} is always measured")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache-dir", type=Path, default=None,
                    help="exported artifacts (default: the pipeline's PAIRDISTILL_INFERENCE_CACHE)")
    ap.add_argument("--config", type=Path, default=None, help="where the CPU default is read (config.yaml)")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = ap.parse_args(argv)

    import torch
    from transformers import AutoTokenizer

    from .. import inference, runtime

    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    path = runtime.resolve_model(args.model)
    tok = AutoTokenizer.from_pretrained(path)
    docs = read_jsonl(args.data / "corpus.jsonl", 2 * args.passages)
    texts = [passage_text(d) for d in docs[:args.passages]]
    calib_texts = [passage_text(d) for d in docs[args.passages:]] or texts
    queries = [q for _, q, _ in test_queries(args.data, args.queries)]
    feats = features(tok, texts, args.max_length)
    bs = padded_batches(tok, feats, args.batch_size)
    qbs = padded_batches(tok, features(tok, queries, args.query_max_length), 64)
    calib = [b for _, b in padded_batches(tok, features(tok, calib_texts[:128], args.max_length), args.batch_size)]
    real_tokens = int(sum(len(f["input_ids"]) for f in feats))
    cache_dir = args.cache_dir or inference.default_cache_dir()

    default, default_from = cpu_default(args.config)
    variants = parse_variants(args.backends)
    variants = [REFERENCE] + [v for v in variants if v != REFERENCE]
    models, skipped, build_s = {}, {}, {}
    for v in variants:
        t = time.perf_counter()
        m = load_variant(path, v, cache_dir, args.threads, calib)
        build_s[v] = time.perf_counter() - t
        (skipped if isinstance(m, str) else models)[v] = m
        log(f"{v}: " + (f"skipped: {m}" if isinstance(m, str) else f"loaded in {build_s[v]:.1f}s"))
    if REFERENCE in skipped:
        raise SystemExit(f"the reference {REFERENCE} cannot run: {skipped[REFERENCE]}")

    runners = {v: (lambda step, m=m: call(m, bs[step][1])) for v, m in models.items()}
    seconds, outputs = interleaved(runners, len(bs), args.rounds, log)

    def assemble(outs):
        emb = np.zeros((len(feats), outs[0].shape[-1]), np.float32)
        for (idx, b), h in zip(bs, outs):
            emb[idx] = pooled(h, b["attention_mask"])
        return emb

    ref_vec = assemble(outputs[REFERENCE])
    ref_scores = embed(models[REFERENCE], qbs, len(queries)) @ ref_vec.T
    rows = []
    for v in variants:
        row = {"name": v, **split_variant(v)}
        if v in skipped:
            rows.append({**row, "skipped": skipped[v]})
            continue
        vec = assemble(outputs[v])
        scores = embed(models[v], qbs, len(queries)) @ vec.T
        rho = np.array([spearman(a, b) for a, b in zip(ref_scores, scores)])
        t = timing(seconds[v], seconds[REFERENCE])
        rows.append({**row, "tokens_per_s": real_tokens / t["seconds_best"], **t,
                     "max_abs_diff_pooled": float(np.abs(vec - ref_vec).max()),
                     "cosine_min": float((vec * ref_vec).sum(1).min()),
                     "spearman_mean": float(rho.mean()), "spearman_min": float(rho.min()),
                     "load_s": round(build_s[v], 2), "artifact": str(getattr(models[v], "artifact", None) or "")})
    by_name = {r["name"]: r for r in rows}
    result = {"benchmark": "inference", "backend": default, "backend_from": default_from, "ratio": None}
    if default in by_name and not by_name[default].get("skipped"):
        result["ratio"] = by_name[default]["speedup_vs_reference"]
    else:
        result["message"] = (f"the CPU default {default} was not measured here"
                             + (f": {by_name[default]['skipped']}" if default in by_name else
                                " (not in --backends)"))
    result.update({"model": args.model, "passages": len(texts), "queries": len(queries),
                   "max_length": args.max_length, "batch_size": args.batch_size, "batches": len(bs),
                   "real_tokens": real_tokens, "padded_tokens": int(sum(b["input_ids"].size for _, b in bs)),
                   "rounds": args.rounds, "timing": "interleaved per batch; best of rounds per batch, summed",
                   "load_avg": {"start": list(load_start), "end": list(os.getloadavg())},
                   "env": environment(args.threads), "rows": rows})
    show(rows)
    return emit(result, args.out)


if __name__ == "__main__":
    main()
