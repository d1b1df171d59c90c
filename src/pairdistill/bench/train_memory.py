"""Peak training memory per micro-batch query: the benchmark behind docs/gpus.md's micro_batch table.

    python -m pairdistill.bench train-memory --out /tmp/train-memory            # CPU, a few minutes
    python -m pairdistill.bench train-memory --out DIR --device cuda --nway 64   # on a GPU

For each student shape (``minilm``: the embedded default's all-MiniLM-L6-v2; ``bert-base``: a
random BERT-base-shaped ColBERT, the paper's colbertv2.0 shape, built offline) and precision, it
runs one training step (forward, backward, AdamW) of ``m`` queries x ``nway`` passages of
``doc_maxlen`` tokens (every token real, the worst case), in-batch negatives on, for each ``m`` of
``--queries``, each in a fresh process. The peak is the process's resident set on CPU (the
kernel's ``getrusage``) or ``torch.cuda.max_memory_allocated`` on a GPU. Per query = the slope
over ``m``; fixed = the rest (weights, AdamW states, the runtime).

On a CPU the step runs at a small ``nway`` (8) to stay within minutes; the per-query figure is
then scaled to the paper's 64 passages (linear in passages: activations are per passage) and the
GPU table is extrapolated from it: labelled as such in ``train_memory.md``. Run it on the GPU
(``--device cuda --nway 64``, or ``python -m pairdistill selfcheck``) to replace the estimate.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

BERT_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                 max_position_embeddings=512)
GPU_GB = (24, 40, 80, 141)


def build_student(shape: str, out: Path, *, dim: int = 128, query_maxlen: int = 32, doc_maxlen: int = 180) -> Path:
    """A ColBERT checkpoint of the given shape (``minilm`` or ``bert-base``; random weights for the
    latter, MiniLM's uncased vocabulary), built offline."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from .. import runtime
    from ..students import colbert

    ckpt = out / f"{shape}-colbert"
    if (ckpt / "config.json").exists():
        return ckpt
    base = runtime.resolve_model("minilm")
    if shape == "bert-base":
        tok = AutoTokenizer.from_pretrained(base)
        torch.manual_seed(0)
        raw = out / "bert-base-random"
        BertModel(BertConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, **BERT_BASE)).save_pretrained(raw)
        tok.save_pretrained(raw)
        base = str(raw)
    elif shape != "minilm":
        raise ValueError(f"unknown student shape {shape!r} (minilm | bert-base)")
    colbert.init_checkpoint(base, ckpt, dim=dim, query_maxlen=query_maxlen, doc_maxlen=doc_maxlen, seed=0)
    return ckpt


def synthetic_batch(m: int, nway: int, query_maxlen: int, doc_maxlen: int, vocab: int, device, seed: int = 0):
    """A training batch of random token ids, every passage ``doc_maxlen`` tokens long."""
    import torch

    from ..train import Batch

    g = torch.Generator().manual_seed(seed)
    q_ids = torch.randint(1000, vocab, (m, query_maxlen), generator=g)
    q_ids[:, 0], q_ids[:, 1] = 101, 1  # [CLS] [Q]
    d_ids = torch.randint(1000, vocab, (m * nway, doc_maxlen), generator=g)
    d_ids[:, 0], d_ids[:, 1], d_ids[:, -1] = 101, 2, 102  # [CLS] [D] ... [SEP]
    pairs = torch.tensor([[r, i, i + 1] for r in range(m) for i in range(0, nway - 1, 2)]).view(-1, 3)
    return Batch(q_ids=q_ids.to(device), q_mask=torch.ones_like(q_ids).to(device), d_ids=d_ids.to(device),
                 d_mask=torch.ones_like(d_ids).to(device),
                 teacher=torch.randn(m, nway, generator=g).to(device), pair_index=pairs.to(device),
                 teacher_prob=torch.rand(len(pairs), generator=g).to(device),
                 positive_index=torch.zeros(m, dtype=torch.long, device=device),
                 extra_owner=torch.zeros(0, dtype=torch.long, device=device), nway=nway)


def one_step(checkpoint: str, m: int, nway: int, doc_maxlen: int, precision: str, device: str,
             grad_checkpointing: bool = False, steps: int = 1) -> dict:
    """One training step of ``m`` queries in this process: its peak memory and time."""
    import torch
    from accelerate import Accelerator

    from ..students import colbert
    from ..losses import PairDistillLoss
    from ..train.loop import _MIXED, batch_gradients

    dev = torch.device(device)
    model = colbert.load_student(checkpoint, query_maxlen=32, doc_maxlen=doc_maxlen)
    model.use_gpu = False
    if grad_checkpointing:
        model.bert.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.to(dev).train()
    acc = Accelerator(cpu=dev.type == "cpu", mixed_precision=_MIXED[precision])
    opt = acc.prepare(torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5))
    batch = synthetic_batch(m, nway, 32, doc_maxlen, model.raw_tokenizer.vocab_size, dev)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    # what autograd keeps for the backward pass (the activations), each storage once, weights aside:
    # exact and allocator-independent, where a CPU's peak RSS is blurred by malloc's caching
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in weights:
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    start = time.monotonic()
    for _ in range(steps):
        opt.zero_grad()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            batch_gradients(model, batch, PairDistillLoss(), in_batch_negatives=True, autocast=acc.autocast,
                            backward=acc.backward)
        opt.step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.monotonic() - start) / steps
    peak = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else None
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"seconds_per_step": round(seconds, 3), "cuda_peak_mb": None if peak is None else round(peak, 1),
            "saved_for_backward_mb": round(sum(saved.values()) / 2**20, 1), "parameters": params}


_WRAPPER = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[2:]).returncode; "
            "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); "
            "sys.exit(code)")


def measure(checkpoint: Path, m: int, nway: int, doc_maxlen: int, precision: str, device: str, work: Path,
            grad_checkpointing: bool = False, threads: int = 2) -> dict:
    """``one_step`` in a fresh process: its peak (RSS on CPU, allocated on a GPU) and time."""
    work.mkdir(parents=True, exist_ok=True)
    tag = f"{checkpoint.name}-m{m}-n{nway}-{precision}{'-ckpt' if grad_checkpointing else ''}"
    rss, out = work / f"{tag}.maxrss", work / f"{tag}.json"
    cmd = [sys.executable, "-m", "pairdistill.bench", "train-memory", "--one", str(checkpoint), "--m", str(m),
           "--nway", str(nway), "--doc-maxlen", str(doc_maxlen), "--precision", precision, "--device", device,
           "--result", str(out), "--threads", str(threads)] + (["--grad-checkpointing"] if grad_checkpointing else [])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[1]),
                                                                     os.environ.get("PYTHONPATH")]))}
    with open(work / f"{tag}.log", "w") as log:
        code = subprocess.run([sys.executable, "-c", _WRAPPER, str(rss), *cmd], stdout=log, stderr=subprocess.STDOUT,
                              env=env).returncode
    if code != 0:
        raise RuntimeError(f"{tag} failed ({code}); see {work / f'{tag}.log'}")
    got = json.loads(out.read_text())
    peak = got["cuda_peak_mb"] if got["cuda_peak_mb"] is not None else int(rss.read_text()) / 1024.0
    return {"m": m, "nway": nway, "doc_maxlen": doc_maxlen, "precision": precision, "device": device,
            "grad_checkpointing": grad_checkpointing, "peak_mb": round(peak, 1),
            "saved_for_backward_mb": got["saved_for_backward_mb"], "parameters": got["parameters"],
            "seconds_per_step": got["seconds_per_step"]}


def batch_part_gb(batch_size: int, nway: int, doc_maxlen: int, query_maxlen: int = 32, dim: int = 128) -> float:
    """Memory of the whole batch's side of a step (not per micro-batch), fp32: the cached
    embeddings, their gradients and the gathered copy, plus one chunk of in-batch similarities."""
    from ..train.loop import MAXSIM_CHUNK_BYTES

    emb = batch_size * (nway * doc_maxlen + query_maxlen) * dim * 4
    return (3 * emb + 2 * MAXSIM_CHUNK_BYTES) / 2**30


CUDA_OVERHEAD_GB = 1.0   # CUDA context, cuBLAS workspaces, allocator slack (an assumption, not measured)
TRANSIENT = 1.25         # backward's transient buffers over what the forward keeps (an assumption)


def fit_table(rows: pd.DataFrame, *, target_nway: int, batch_size: int, doc_maxlen: int,
              headroom: float = 0.9) -> pd.DataFrame:
    """Per model and precision, from the measured runs: what autograd keeps per query (the slope
    over micro-batch sizes, scaled to ``target_nway`` passages when measured at fewer: it is per
    passage), and for each GPU size the largest micro_batch (a power of two dividing
    ``batch_size``) whose estimate fits ``headroom`` of it:

        fixed (weights, gradients, AdamW: 16 bytes a parameter, + CUDA_OVERHEAD_GB)
        + the batch's side (cached embeddings, one MaxSim chunk: :func:`batch_part_gb`)
        + micro_batch x per query x TRANSIENT

    On a GPU run (``--device cuda``) the peak is measured directly and ``peak_per_query_gb`` is its
    slope; the estimate above is still what the columns use, so the two can be compared."""
    out = []
    for (model, precision, gc), g in rows.groupby(["model", "precision", "grad_checkpointing"], sort=False):
        g = g.sort_values("m")
        m = g["m"].to_numpy(float)
        saved = g["saved_for_backward_mb"].to_numpy(float) / 1024.0
        peak = g["peak_mb"].to_numpy(float) / 1024.0
        nway = int(g["nway"].iloc[0])
        scale = target_nway / nway
        per_query = (saved[-1] - saved[0]) / (m[-1] - m[0]) * scale
        fixed = 16 * float(g["parameters"].iloc[0]) / 2**30 + CUDA_OVERHEAD_GB
        row = {"model": model, "precision": precision, "grad_checkpointing": bool(gc), "measured_nway": nway,
               "parameters_m": round(float(g["parameters"].iloc[0]) / 1e6, 1), "fixed_gb": round(fixed, 2),
               f"per_query_gb_at_nway_{target_nway}": round(per_query, 2),
               "peak_per_query_gb": round((peak[-1] - peak[0]) / (m[-1] - m[0]) * scale, 2),
               "batch_part_gb": round(batch_part_gb(batch_size, target_nway, doc_maxlen), 2)}
        for gb in GPU_GB:
            fits = [k for k in (1, 2, 4, 8, 16, 32, 64, 128) if batch_size % k == 0 and
                    fixed + row["batch_part_gb"] + k * per_query * TRANSIENT <= headroom * gb]
            row[f"micro_batch_{gb}gb"] = max(fits) if fits else 0
        out.append(row)
    return pd.DataFrame(out)


def markdown(table: pd.DataFrame, *, device: str, target_nway: int, doc_maxlen: int, batch_size: int) -> str:
    scaled = (table["measured_nway"] != target_nway).any()
    lines = [f"Per query: what autograd keeps for the backward pass, measured on {device} "
             f"{'at nway ' + str(int(table['measured_nway'].iloc[0])) + ' and scaled to' if scaled else 'at'} "
             f"{target_nway} passages of {doc_maxlen} tokens (every token real). Micro-batch columns: "
             f"{'EXTRAPOLATED to GPUs' if device == 'cpu' else 'estimated'}, batch {batch_size}: fixed "
             f"(16 B/parameter + {CUDA_OVERHEAD_GB:g} GB) + batch part + micro_batch x per query x {TRANSIENT:g} "
             "<= 90% of the GPU.", "",
             "| model | precision | fixed GB | batch part GB | per query GB | "
             + " | ".join(f"{gb} GB" for gb in GPU_GB) + " |",
             "|---|---|---|---|---|" + "---|" * len(GPU_GB)]
    for r in table.to_dict("records"):
        lines.append(f"| {r['model']}{' (checkpointing)' if r['grad_checkpointing'] else ''} | {r['precision']} | "
                     f"{r['fixed_gb']} | {r['batch_part_gb']} | {r[f'per_query_gb_at_nway_{target_nway}']} | "
                     + " | ".join(str(r[f"micro_batch_{gb}gb"]) for gb in GPU_GB) + " |")
    return "\n".join(lines) + "\n"


def run(out: Path, *, models: list[str], precisions: list[str], queries: list[int], nway: int, target_nway: int,
        doc_maxlen: int, batch_size: int, device: str, grad_checkpointing: bool, threads: int) -> pd.DataFrame:
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for model in models:
        ckpt = build_student(model, out, doc_maxlen=doc_maxlen)
        for precision in precisions:
            for m in queries:
                r = {"model": model, **measure(ckpt, m, nway, doc_maxlen, precision, device, out / "runs",
                                               grad_checkpointing, threads)}
                rows.append(r)
                print(json.dumps(r), flush=True)
    raw = pd.DataFrame(rows)
    raw.to_csv(out / "train_memory_runs.tsv", sep="\t", index=False)
    table = fit_table(raw, target_nway=target_nway, batch_size=batch_size, doc_maxlen=doc_maxlen)
    table.to_csv(out / "train_memory.tsv", sep="\t", index=False)
    (out / "train_memory.md").write_text(markdown(table, device=device, target_nway=target_nway,
                                                  doc_maxlen=doc_maxlen, batch_size=batch_size))
    return table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--models", nargs="+", default=["minilm", "bert-base"])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--queries", type=int, nargs="+", default=[1, 2], help="micro-batch sizes measured")
    ap.add_argument("--nway", type=int, default=None, help="passages per query measured (default: 8 on CPU, 64 on GPU)")
    ap.add_argument("--target-nway", type=int, default=64)
    ap.add_argument("--doc-maxlen", type=int, default=180)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--grad-checkpointing", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    # one measurement, in its own process (run by measure())
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--m", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--precision", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.one:
        import torch

        torch.set_num_threads(a.threads)
        got = one_step(a.one, a.m, a.nway, a.doc_maxlen, a.precision, a.device, a.grad_checkpointing)
        Path(a.result).write_text(json.dumps(got))
        return 0
    if a.out is None:
        ap.error("--out is required")
    nway = a.nway or (64 if a.device.startswith("cuda") else 8)
    run(a.out, models=a.models, precisions=a.precisions, queries=a.queries, nway=nway,
        target_nway=a.target_nway, doc_maxlen=a.doc_maxlen, batch_size=a.batch_size, device=a.device,
        grad_checkpointing=a.grad_checkpointing, threads=a.threads)
    print((a.out / "train_memory.md").read_text())
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        raise SystemExit(main())
