"""Teacher scoring throughput: pairs/s of our pointwise and pairwise scorers per backend, and of sentence-transformers' CrossEncoder.

    python -m pairdistill.bench teacher-throughput --model DIR            # a cross-encoder directory
    python -m pairdistill.bench teacher-throughput                        # builds one from MiniLM (untrained head)
    python -m pairdistill.bench teacher-throughput --model DIR --pairwise-model BERT_DIR --pairwise-model DUOT5_DIR

Ours is the scorer as the pipeline loads and runs it: :func:`pairdistill.teachers.registry.load_pointwise`
and its ``score(queries, docs)`` (tokenization, length-sorted batches with dynamic padding, the
forward pass), on each ``--backends`` variant (backend/precision/quantize, as in
``bench inference``) that the loader can select: by a ``backend=`` argument of ``load_pointwise``
where it has one, else under :func:`pairdistill.inference.pipeline.use` where that module exists,
else torch only (said in ``ours_backends_via``). The peer is sentence-transformers'
``CrossEncoder(model, max_length=...).predict(pairs, batch_size=...)`` on the same weights, with its
torch backend and with ``backend="openvino"`` (needs optimum-intel; ``backend="onnx"`` needs
optimum-onnx and the onnx package, which brings protobuf: not installed here). Its scores are
taken as raw logits (``activation_fn`` the identity) so they compare with ours.

sentence-transformers is not a requirement of the pipeline; envs/ installs 5.3.0 (with --no-deps,
for PyLate: the export tests), on which this benchmark's peer then runs; it skips the peer with a
message where it is not installed. The measured figures were taken with
``pip install --no-deps sentence-transformers==6.2.0 optimum==2.3.0 optimum-intel==2.2.0
openvino-tokenizers==2026.4.1.0`` (6.2.0 asks for transformers 5 but runs on 4.57; the full
dependency resolution would replace torch and transformers).

The 512 pairs are SciFact test queries, each with its judged passages and random others (seed 0)
up to ``--per-query`` passages. All scorers see the same pairs in the same chunks of ``--chunk``
pairs, interleaved per chunk (A B C A B C ...), ``--rounds`` times; a scorer's time is the best of
the rounds per chunk, summed. Agreement: the max abs difference of each scorer's scores from ours
on torch fp32 (fp32 variants must be within 1e-4) and their Pearson / Spearman correlation with
CrossEncoder's torch scores.

The pairwise families (``--pairwise-model``, repeatable; family detected as the pipeline does:
bert-pairwise, or duot5 for a T5 directory) are ours only (the peer has no pairwise reranker):
pairs/s of ``load_pairwise(...).prob(q, a, b)`` per backend, on triples of a query's passages;
duot5 scores both orders (a, b) and (b, a). With no ``--pairwise-model`` a bert-pairwise is built
from MiniLM as the cross-encoder is.

Without ``--model`` the cross-encoder is built here from the MiniLM weights
(AutoModelForSequenceClassification, num_labels=1, seed 0) in a temporary directory: an untrained
head, so throughput is valid but the agreement of rankings between backends means less.

The last line printed is one JSON object: ``ratio_torch`` (our fastest / CrossEncoder torch),
``ratio_fastest`` (our fastest / CrossEncoder's fastest CPU backend, null with ``message`` where only
its torch backend runs), ``rows`` and ``pairwise_rows``.
"""
from __future__ import annotations

import argparse
import contextlib
import inspect
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np

from .inference import (REFERENCE, SCIFACT, emit, environment, interleaved, log, parse_variants, passage_text,
                        read_jsonl, spearman, split_variant, test_queries, timing)

DEFAULT_BACKENDS = "torch/fp32/none,torch/fp32/int8,openvino/fp32/none,openvino/bf16/none,openvino/fp32/int8"


def scifact_pairs(data: Path, n: int, per_query: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """``n`` (query id, query, passage) pairs: test queries in order, each with its judged
    passages and random other ones up to ``per_query``."""
    corpus = {d["_id"]: passage_text(d) for d in read_jsonl(data / "corpus.jsonl")}
    ids = list(corpus)
    rng = random.Random(seed)
    pairs = []
    for qid, query, judged in test_queries(data):
        docs = [d for d in judged if d in corpus][:per_query]
        while len(docs) < per_query:
            d = rng.choice(ids)
            if d not in docs:
                docs.append(d)
        pairs += [(qid, query, corpus[d]) for d in docs]
        if len(pairs) >= n:
            break
    return pairs[:n]


def build_classifier(base: str, out: Path) -> str:
    """A sequence classifier with one label on ``base``'s weights (head seeded 0), saved in ``out``."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_pretrained(base, num_labels=1).save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return str(out)


def backend_route(loader) -> str:
    """How the pipeline's loader is told a backend: 'argument', 'pipeline' or 'torch-only'."""
    if "backend" in inspect.signature(loader).parameters:
        return "argument"
    try:
        from ..inference import pipeline
    except ImportError:
        return "torch-only"
    return "pipeline" if hasattr(pipeline, "use") else "torch-only"


def settings_context(route: str, variant: str):
    if route != "pipeline":
        return contextlib.nullcontext()
    from ..inference import pipeline

    return pipeline.use(split_variant(variant))


def load_ours(kind: str, model: str, variant: str, route: str, max_length: int, batch_size: int, family: str):
    """(scorer, context to run it under) or the one-line reason it cannot run here (a str)."""
    from .. import inference
    from ..errors import SettingError
    from ..teachers import registry

    loader = registry.load_pointwise if kind == "pointwise" else registry.load_pairwise
    s = split_variant(variant)
    if variant != REFERENCE and route == "torch-only":
        return "the pipeline's teacher loader takes no inference backend yet (torch only)"
    try:
        inference.check_backend(s["backend"], s["quantize"], family, "cpu", s["precision"])
    except SettingError as exc:
        return str(exc)
    kw = dict(family="auto", max_length=max_length, device="cpu", batch_size=batch_size)
    if route == "argument":
        kw.update(s)
    try:
        with settings_context(route, variant):
            return loader(model, **kw), (lambda: settings_context(route, variant))
    except Exception as exc:  # noqa: BLE001 - a variant that fails to load is a skipped row, said why
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


PEER_BACKENDS = ("torch", "openvino", "openvino-f32")


def load_peer(model: str, backend: str, max_length: int):
    """sentence-transformers' CrossEncoder on ``backend``, or why not (a str)."""
    try:
        from sentence_transformers import CrossEncoder
    except ImportError:
        return "sentence-transformers is not installed (pip install --no-deps sentence-transformers==6.2.0)"
    import torch

    try:
        # "openvino" as optimum-intel compiles it by default (bf16 where the CPU has it);
        # "openvino-f32" with OpenVINO's fp32 hint, as ours runs openvino/fp32
        kw = {"model_kwargs": {"ov_config": {"INFERENCE_PRECISION_HINT": "f32"}}} if backend == "openvino-f32" else {}
        return CrossEncoder(model, max_length=max_length, device="cpu", backend=backend.split("-")[0],
                            activation_fn=torch.nn.Identity(), **kw)
    except Exception as exc:  # noqa: BLE001 - e.g. optimum-intel missing for backend="openvino"
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def chunked(n: int, size: int) -> list[slice]:
    return [slice(s, min(s + size, n)) for s in range(0, n, size)]


def our_scorers(kind: str, model: str, route: str, max_length: int, args, family: str, label: str,
                chunks: list[slice], score) -> tuple[dict, dict]:
    """Our scorer per backend variant (the reference first), each a step function of the chunk
    index running ``score(scorer, chunk)`` under its settings; and the variants skipped, with why."""
    scorers, skipped = {}, {}
    for v in [REFERENCE] + [v for v in parse_variants(args.backends) if v != REFERENCE]:
        got = load_ours(kind, model, v, route, max_length, args.batch_size, family)
        name = f"{label} {v}"
        if isinstance(got, str):
            skipped[name] = got
            log(f"{name}: skipped: {got}")
            continue
        scorer, ctx = got

        def run(step, scorer=scorer, ctx=ctx):
            with ctx():
                return score(scorer, chunks[step])
        scorers[name] = run
    return scorers, skipped


def measure(scorers: dict, chunks: list[slice], rounds: int) -> tuple[dict, dict]:
    seconds, outputs = interleaved(scorers, len(chunks), rounds, log)
    scores = {k: np.concatenate([np.asarray(o, dtype=np.float32).reshape(-1) for o in outs])
              for k, outs in outputs.items()}
    return seconds, scores


def show(rows: list[dict], title: str) -> None:
    print(f"\n== {title} ==")
    print(f"{'scorer':28} {'pairs/s':>9} {'x ref':>7} {'max|d| ours fp32':>16} {'pearson CE':>10} {'spearman CE':>11}  skipped")
    for r in rows:
        if r.get("skipped"):
            print(f"{r['name']:28} {'-':>9} {'-':>7} {'-':>16} {'-':>10} {'-':>11}  {r['skipped']}")
            continue
        f = (lambda k: f"{r[k]:.6f}" if r.get(k) is not None else "-")
        print(f"{r['name']:28} {r['pairs_per_s']:9.1f} {r['speedup_vs_reference']:7.2f} "
              f"{r['max_abs_diff_vs_ours_torch_fp32']:16.2e} {f('pearson_vs_crossencoder_torch'):>10} "
              f"{f('spearman_vs_crossencoder_torch'):>11}")


def pointwise_section(args, model: str, pairs, route: str) -> tuple[list[dict], dict]:
    queries = [q for _, q, _ in pairs]
    docs = [d for _, _, d in pairs]
    chunks = chunked(len(pairs), args.chunk)
    scorers, skipped = our_scorers("pointwise", model, route, args.max_length, args, "cross-encoder", "ours",
                                   chunks, lambda scorer, sl: scorer.score(queries[sl], docs[sl]))
    peer_msg = None
    for backend in [b for b in args.peer_backends.split(",") if b] if not args.no_peer else ():
        ce = load_peer(model, backend, args.max_length)
        name = f"CrossEncoder {backend}"
        if isinstance(ce, str):
            skipped[name] = ce
            log(f"{name}: skipped: {ce}")
            continue
        scorers[name] = (lambda step, ce=ce: ce.predict(list(zip(queries[chunks[step]], docs[chunks[step]])),
                                                        batch_size=args.batch_size, show_progress_bar=False))
    if "CrossEncoder onnx" not in skipped and not args.no_peer:
        skipped["CrossEncoder onnx"] = ("not installed: optimum-onnx needs the onnx package, which brings "
                                        "protobuf (kept out of this environment)")
    seconds, scores = measure(scorers, chunks, args.rounds)
    ref = f"ours {REFERENCE}"
    peer = scores.get("CrossEncoder torch")
    rows = []
    for name in list(scorers) + list(skipped):
        row = {"name": name, "scorer": "ours" if name.startswith("ours") else "sentence-transformers"}
        if name in skipped:
            rows.append({**row, "skipped": skipped[name]})
            continue
        t = timing(seconds[name], seconds[ref])
        d = float(np.abs(scores[name] - scores[ref]).max())
        row.update(pairs_per_s=len(pairs) / t["seconds_best"], **t, max_abs_diff_vs_ours_torch_fp32=d,
                   pearson_vs_crossencoder_torch=None, spearman_vs_crossencoder_torch=None)
        fp32 = ("/fp32/none" in name) or name == "CrossEncoder torch"
        if fp32:
            row["fp32_within_1e-4"] = d <= 1e-4
        if peer is not None:
            row["max_abs_diff_vs_crossencoder_torch"] = float(np.abs(scores[name] - peer).max())
            row["pearson_vs_crossencoder_torch"] = float(np.corrcoef(scores[name], peer)[0, 1])
            row["spearman_vs_crossencoder_torch"] = spearman(scores[name], peer)
        rows.append(row)
    return rows, {"peer_message": peer_msg}


def pairwise_section(args, model: str, pairs, route: str) -> list[dict]:
    from ..teachers import registry

    family = registry.detect_family(registry._locate(model), "pairwise")
    # triples (q, a, b): each passage against the next one of the same query
    by_query: dict[str, list[int]] = {}
    for i, (qid, _, _) in enumerate(pairs):
        by_query.setdefault(qid, []).append(i)
    triples = [(pairs[i][1], pairs[i][2], pairs[idx[(k + 1) % len(idx)]][2])
               for idx in by_query.values() if len(idx) > 1 for k, i in enumerate(idx)]
    if family == "duot5":  # the pipeline scores both orders: n/2 triples, each way round
        half = triples[:len(triples) // 2]
        triples = half + [(q, b, a) for q, a, b in half]
    q, a, b = (list(x) for x in zip(*triples))
    chunks = chunked(len(triples), args.chunk)
    scorers, skipped = our_scorers("pairwise", model, route, args.pairwise_max_length, args, family,
                                   f"ours {family}", chunks, lambda scorer, sl: scorer.prob(q[sl], a[sl], b[sl]))
    seconds, scores = measure(scorers, chunks, args.rounds)
    ref = f"ours {family} {REFERENCE}"
    rows = []
    for name in list(scorers) + list(skipped):
        row = {"name": name, "family": family, "model": model, "inputs": len(triples)}
        if name in skipped:
            rows.append({**row, "skipped": skipped[name]})
            continue
        t = timing(seconds[name], seconds[ref])
        d = float(np.abs(scores[name] - scores[ref]).max())
        row.update(pairs_per_s=len(triples) / t["seconds_best"], **t, max_abs_diff_vs_ours_torch_fp32=d,
                   spearman_vs_ours_torch_fp32=spearman(scores[name], scores[ref]))
        if "/fp32/none" in name:
            row["fp32_within_1e-4"] = d <= 1e-4
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None,
                    help="a cross-encoder directory (default: built here from MiniLM, untrained head)")
    ap.add_argument("--pairwise-model", action="append", default=None,
                    help="a bert-pairwise or duot5 directory (repeatable; default: a bert-pairwise built from MiniLM)")
    ap.add_argument("--no-pairwise", action="store_true", help="skip the pairwise families")
    ap.add_argument("--no-peer", action="store_true", help="skip sentence-transformers")
    ap.add_argument("--peer-backends", default=",".join(PEER_BACKENDS),
                    help=f"CrossEncoder backends, comma-separated (of {', '.join(PEER_BACKENDS)})")
    ap.add_argument("--data", type=Path, default=SCIFACT)
    ap.add_argument("--pairs", type=int, default=512)
    ap.add_argument("--per-query", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--pairwise-max-length", type=int, default=320)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--chunk", type=int, default=128, help="pairs per interleaved call")
    ap.add_argument("--backends", default=DEFAULT_BACKENDS,
                    help=f"ours: backend[/precision/quantize], comma-separated ({REFERENCE} always)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = ap.parse_args(argv)

    import torch

    from .. import runtime
    from ..teachers import registry

    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    tmp = tempfile.TemporaryDirectory(prefix="teacher_throughput_")
    notes = []
    model = args.model
    if model is None:
        model = build_classifier(runtime.resolve_model("minilm"), Path(tmp.name) / "cross-encoder")
        notes.append("no --model: the cross-encoder was built here from all-MiniLM-L6-v2 "
                     "(AutoModelForSequenceClassification, num_labels=1, seed 0): an untrained head, so "
                     "throughput is valid, agreement of rankings between backends less meaningful")
    pairwise = [] if args.no_pairwise else args.pairwise_model
    if pairwise is None:
        pairwise = [build_classifier(runtime.resolve_model("minilm"), Path(tmp.name) / "bert-pairwise")]
        notes.append("no --pairwise-model: a bert-pairwise was built here the same way (untrained head)")
    pairs = scifact_pairs(args.data, args.pairs, args.per_query)
    route = backend_route(registry.load_pointwise)
    t0 = time.perf_counter()
    rows, _ = pointwise_section(args, model, pairs, route)
    by = {r["name"]: r for r in rows if not r.get("skipped")}
    ours = {k: r for k, r in by.items() if k.startswith("ours")}
    fastest = max(ours, key=lambda k: ours[k]["pairs_per_s"])
    peers = {k: r for k, r in by.items() if k.startswith("CrossEncoder")}
    result = {"benchmark": "teacher-throughput", "ratio_torch": None, "ratio_fastest": None,
              "ours_fastest": fastest}
    messages = []
    if "CrossEncoder torch" in peers:
        result["ratio_torch"] = ours[fastest]["pairs_per_s"] / peers["CrossEncoder torch"]["pairs_per_s"]
        non_torch = [k for k in peers if k != "CrossEncoder torch"]
        if non_torch:
            peer_fastest = max(peers, key=lambda k: peers[k]["pairs_per_s"])
            result["peer_fastest"] = peer_fastest
            result["ratio_fastest"] = ours[fastest]["pairs_per_s"] / peers[peer_fastest]["pairs_per_s"]
        else:
            messages.append("CrossEncoder ran on torch only (its onnx/openvino backends need optimum-onnx / "
                            "optimum-intel, not installed): ratio_fastest is null")
    else:
        reason = next((r["skipped"] for r in rows if r["name"] == "CrossEncoder torch"), "skipped (--no-peer)")
        messages.append(f"sentence-transformers' CrossEncoder not measured: {reason}")
    ref_row = by[f"ours {REFERENCE}"]
    result["ours_torch_fp32_vs_crossencoder_torch"] = {
        k: ref_row.get(k) for k in ("max_abs_diff_vs_crossencoder_torch", "pearson_vs_crossencoder_torch",
                                    "spearman_vs_crossencoder_torch")}
    result["fp32_within_1e-4"] = all(r.get("fp32_within_1e-4", True) for r in by.values())
    show(rows, f"pointwise: {len(pairs)} pairs, max_length {args.max_length}, batch {args.batch_size}")
    pairwise_rows = []
    for pm in pairwise:
        pr = pairwise_section(args, pm, pairs, route)
        show([{**r, "pearson_vs_crossencoder_torch": None, "spearman_vs_crossencoder_torch": None} for r in pr],
             f"pairwise {pr[0]['family']}: {pr[0]['inputs']} inputs, max_length {args.pairwise_max_length}")
        pairwise_rows += pr
    if messages:
        result["message"] = "; ".join(messages)
    result.update({"notes": notes, "model": args.model or "built from minilm", "pairs": len(pairs),
                   "queries": len({q for q, _, _ in pairs}), "max_length": args.max_length,
                   "pairwise_max_length": args.pairwise_max_length, "batch_size": args.batch_size,
                   "chunk": args.chunk, "rounds": args.rounds, "ours_backends_via": route,
                   "timing": "interleaved per chunk; best of rounds per chunk, summed",
                   "seconds": round(time.perf_counter() - t0, 1),
                   "load_avg": {"start": list(load_start), "end": list(os.getloadavg())},
                   "env": environment(args.threads, ("sentence-transformers", "optimum", "optimum-intel")),
                   "rows": rows, "pairwise_rows": pairwise_rows})
    tmp.cleanup()
    return emit(result, args.out)


if __name__ == "__main__":
    main()
