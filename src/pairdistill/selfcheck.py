"""``python -m pairdistill selfcheck --device cuda|cpu [--small]``: can this machine run the paper?

Three parts, each on random weights and synthetic data (no hub, no data set), each reported on its
own and skipped, with the reason, when what it needs is missing:

* ``train``: one training step at the paper's shapes (32 queries x 64 passages of 180 tokens,
  in-batch negatives) on a BERT-base-shaped ColBERT (BERT-base + a 128-d projection, as
  colbertv2.0) in bf16, with micro_batch 4, 8 and 16 (the gradient cache): seconds per step,
  steps/s and peak memory; an out-of-memory is reported as such.
* ``teachers``: scoring throughput of a MiniLM-shaped cross-encoder at 180 tokens and of a T5 with
  duoT5-3B's shape in bf16 at 360 tokens (first decoding step, as duoT5 scores).
* ``colbert``: colbert-ai indexing and search of a synthetic collection (skipped without
  colbert-ai, as on a GPU machine where its wheels were not carried).

``--small`` shrinks every shape (tiny models, a few hundred passages) so the whole check runs on
a CPU in about a minute; its figures say that the code paths work, not how fast the paper runs.
The figures go to ``--out`` (JSON) and stdout.
"""

from __future__ import annotations

import json
import platform
import time
import traceback
from pathlib import Path
from typing import Literal

PAPER = {"batch_size": 32, "nway": 64, "doc_maxlen": 180, "query_maxlen": 32, "dim": 128,
         "micro_batches": [4, 8, 16],
         "student": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
         "cross_encoder": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
         "cross_encoder_tokens": 180, "cross_encoder_batch": 512,
         "duot5": dict(d_model=1024, d_kv=128, d_ff=16384, num_layers=24, num_decoder_layers=24, num_heads=32),
         "duot5_tokens": 360, "duot5_batch": 64, "steps": 2,
         "collection": 20000, "passage_words": (40, 120), "queries": 256, "partitions": None}
SMALL = {"batch_size": 8, "nway": 8, "doc_maxlen": 64, "query_maxlen": 16, "dim": 32,
         "micro_batches": [2, 4, 8],
         "student": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128),
         "cross_encoder": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128),
         "cross_encoder_tokens": 180, "cross_encoder_batch": 32,
         "duot5": dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=4),
         "duot5_tokens": 360, "duot5_batch": 8, "steps": 1,
         "collection": 400, "passage_words": (20, 60), "queries": 32, "partitions": 64}
VOCAB = 30522


def _sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize()


def _reset_peak(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_mb(dev) -> float | None:
    import torch

    if dev.type == "cuda":
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)  # the process's, so far


class ColBERTShaped:
    """A ColBERT as colbert-ai builds it (a BERT, a bias-free projection to ``dim``, masked and
    L2-normalised token embeddings) with random weights, for when colbert-ai is not installed; the
    training step only needs ``query``, ``doc`` and the parameters."""

    def __new__(cls, bert_shape: dict, dim: int, dev):
        import torch
        from transformers import BertConfig, BertModel

        class Model(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.bert = BertModel(BertConfig(vocab_size=VOCAB, max_position_embeddings=512, **bert_shape),
                                      add_pooling_layer=False)
                self.linear = torch.nn.Linear(bert_shape["hidden_size"], dim, bias=False)

            def _encode(self, ids, mask):
                out = self.linear(self.bert(ids, attention_mask=mask)[0])
                return torch.nn.functional.normalize(out * mask.unsqueeze(2), p=2, dim=2)

            def query(self, ids, mask):
                return self._encode(ids, mask)

            def doc(self, ids, mask, keep_dims="return_mask"):
                return self._encode(ids, mask), mask.bool().unsqueeze(2)

        return Model().to(dev)


def check_train(dev, shapes: dict) -> dict:
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from .bench.train_memory import synthetic_batch
    from .losses import PairDistillLoss
    from .train import batch_gradients, resolve_precision

    precision = resolve_precision("bf16", dev)
    torch.manual_seed(0)
    model = ColBERTShaped(shapes["student"], shapes["dim"], dev)
    model.train()
    params = sum(p.numel() for p in model.parameters())
    AcceleratorState._reset_state(reset_partial_state=False)
    acc = Accelerator(cpu=dev.type == "cpu", mixed_precision="bf16")
    opt = acc.prepare(torch.optim.AdamW(model.parameters(), lr=1e-5))
    batch = synthetic_batch(shapes["batch_size"], shapes["nway"], shapes["query_maxlen"], shapes["doc_maxlen"],
                            VOCAB, dev)
    loss_fn = PairDistillLoss()
    runs = []
    for micro in shapes["micro_batches"]:
        row = {"micro_batch": micro}
        try:
            _reset_peak(dev)
            times = []
            for step in range(shapes["steps"] + 1):  # the first step warms up (allocations, kernels)
                start = time.monotonic()
                opt.zero_grad()
                parts = batch_gradients(model, batch, loss_fn, in_batch_negatives=True, micro_batch=micro,
                                        autocast=acc.autocast, backward=acc.backward)
                opt.step()
                _sync(dev)
                if step:
                    times.append(time.monotonic() - start)
            sec = sum(times) / len(times)
            row.update({"seconds_per_step": round(sec, 3), "steps_per_s": round(1 / sec, 3),
                        "passages_per_s": round(shapes["batch_size"] * shapes["nway"] / sec, 1),
                        "peak_memory_mb": _peak_mb(dev), "loss": round(float(parts["loss"]), 4)})
        except torch.cuda.OutOfMemoryError as exc:
            row.update({"status": "out of memory", "error": str(exc).splitlines()[0]})
            opt.zero_grad(set_to_none=True)
        runs.append(row)
        print(f"selfcheck train: {json.dumps(row)}", flush=True)
    return {"status": "ok", "precision": precision, "parameters": params,
            "shape": {k: shapes[k] for k in ("batch_size", "nway", "doc_maxlen", "query_maxlen", "dim")},
            "student": shapes["student"], "runs": runs,
            "note": "peak memory: torch's allocated peak on a GPU; on a CPU the process's peak RSS so far"}


def _throughput(fn, batch: int, steps: int, dev) -> dict:
    fn()  # warm-up
    _sync(dev)
    start = time.monotonic()
    for _ in range(steps):
        fn()
    _sync(dev)
    sec = (time.monotonic() - start) / steps
    return {"batch": batch, "seconds_per_batch": round(sec, 4), "per_s": round(batch / sec, 1)}


def check_teachers(dev, shapes: dict) -> dict:
    import torch
    from transformers import BertConfig, BertForSequenceClassification, T5Config, T5ForConditionalGeneration

    out = {}
    torch.manual_seed(0)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    n, L = shapes["cross_encoder_batch"], shapes["cross_encoder_tokens"]
    with torch.device(dev):
        ce = BertForSequenceClassification(BertConfig(vocab_size=VOCAB, num_labels=1, max_position_embeddings=512,
                                                      **shapes["cross_encoder"])).to(dtype).eval()
        ids = torch.randint(1000, VOCAB, (n, L))
    _reset_peak(dev)
    with torch.inference_mode():
        r = _throughput(lambda: ce(input_ids=ids, attention_mask=torch.ones_like(ids)).logits, n, 3, dev)
    out["cross_encoder"] = {"shape": shapes["cross_encoder"], "tokens": L, "dtype": str(dtype).split(".")[-1],
                            "pairs_per_s": r["per_s"], **r, "peak_memory_mb": _peak_mb(dev)}
    print(f"selfcheck teachers: cross-encoder {json.dumps(out['cross_encoder'])}", flush=True)
    del ce
    n, L = shapes["duot5_batch"], shapes["duot5_tokens"]
    cfg = T5Config(vocab_size=32128, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, **shapes["duot5"])
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # built in bf16: duoT5-3B is 11 GB in fp32
    try:
        with torch.device(dev):
            t5 = T5ForConditionalGeneration(cfg).eval()
            ids = torch.randint(3, 32000, (n, L))
            dec = torch.zeros((n, 1), dtype=torch.long)
    finally:
        torch.set_default_dtype(default)
    params = sum(p.numel() for p in t5.parameters())
    _reset_peak(dev)
    with torch.inference_mode():
        r = _throughput(lambda: t5(input_ids=ids, attention_mask=torch.ones_like(ids), decoder_input_ids=dec).logits,
                        n, 3 if dev.type == "cuda" else 1, dev)
    out["duot5"] = {"shape": shapes["duot5"], "parameters": params, "tokens": L, "dtype": "bfloat16",
                    "pairs_per_s": r["per_s"], **r, "peak_memory_mb": _peak_mb(dev)}
    print(f"selfcheck teachers: duoT5-shaped {json.dumps(out['duot5'])}", flush=True)
    return {"status": "ok", **out}


def _tiny_tokenizer_dir(out: Path, words: list[str]) -> Path:
    """A BERT word-piece vocabulary of the synthetic words, with the markers colbert-ai uses."""
    from transformers import BertTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[unused0]", "[unused1]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    (out / "vocab.txt").write_text("\n".join(specials + sorted(set(words)) + list("abcdefghijklmnopqrstuvwxyz")) + "\n")
    BertTokenizerFast(vocab_file=str(out / "vocab.txt"), do_lower_case=True).save_pretrained(out)
    return out


def check_colbert(dev, shapes: dict, work: Path) -> dict:
    try:
        import colbert  # noqa: F401
    except ImportError as exc:
        return {"status": "skipped", "reason": f"colbert-ai is not installed ({exc})"}
    import numpy as np
    import pandas as pd
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from .students import colbert as colbert_student  # (colbert: colbert-ai, probed above)

    rng = np.random.default_rng(0)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = ["".join(rng.choice(letters, int(k))) for k in rng.integers(3, 9, size=3000)]
    base = _tiny_tokenizer_dir(work / "base", words)
    tok = BertTokenizerFast.from_pretrained(base)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, max_position_embeddings=512,
                         **shapes["student"])).save_pretrained(base)
    ckpt = work / "colbert"
    colbert_student.init_checkpoint(str(base), ckpt, dim=shapes["dim"], query_maxlen=shapes["query_maxlen"],
                            doc_maxlen=shapes["doc_maxlen"], seed=0)
    lo, hi = shapes["passage_words"]
    n = shapes["collection"]
    texts = [" ".join(rng.choice(words, int(k))) for k in rng.integers(lo, hi, size=n)]
    corpus = pd.DataFrame({"doc_id": [f"d{i}" for i in range(n)], "title": "", "text": texts})
    start = time.monotonic()
    stats = colbert_student.build_index(ckpt, corpus, texts, work / "index", nbits=2, doc_maxlen=shapes["doc_maxlen"],
                                kmeans_niters=4, num_partitions=shapes["partitions"])
    index_s = time.monotonic() - start
    queries = {f"q{i}": " ".join(texts[i].split()[:8]) for i in range(shapes["queries"])}
    kw = dict(ncells=2, centroid_score_threshold=0.45, ndocs=1024)
    start = time.monotonic()
    colbert_student.search(ckpt, work / "index", {"warm-up": texts[0]}, 10, **kw)  # loads the index, builds extensions
    load_s = time.monotonic() - start
    start = time.monotonic()
    run = colbert_student.search(ckpt, work / "index", queries, 10, **kw)
    search_s = time.monotonic() - start
    found = float(np.mean([d == f"d{q[1:]}" for q, d in run[run["rank"] == 1][["query_id", "doc_id"]].itertuples(index=False)]))
    out = {"status": "ok", "passages": n, "index_seconds": round(index_s, 2),
           "passages_per_s": round(n / index_s, 1), "first_search_seconds": round(load_s, 2),
           "search_seconds": round(search_s, 2),
           "queries_per_s": round(len(queries) / search_s, 1), "top1_is_source_passage": round(found, 3),
           "index": stats, "colbert_gpu": torch.cuda.is_available()}
    print(f"selfcheck colbert: {json.dumps(out)}", flush=True)
    return out


def run(device: Literal["cpu", "cuda"] = "cuda", small: bool = False, out: str | Path | None = None,
        parts: tuple[Literal["train", "teachers", "colbert"], ...] = ("train", "teachers", "colbert"),
        work: str | Path | None = None) -> dict:
    """Can this machine run the paper? a training step, teacher scoring and colbert-ai indexing on
    random weights and synthetic data -> JSON.

    Args:
        small: tiny shapes: the code paths in about a minute on a CPU
        out: write the figures here (JSON)
        work: the scratch directory's parent (default: the system's temporary directory)
    """
    import tempfile

    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: selfcheck --device cuda: no GPU visible")
    dev = torch.device(device)
    shapes = SMALL if small else PAPER
    report = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
              "torch": torch.__version__, "small": small, "bf16_supported": dev.type == "cpu"
              or torch.cuda.is_bf16_supported()}
    try:
        import transformers
        report["transformers"] = transformers.__version__
    except ImportError:
        pass
    checks = {"train": lambda: check_train(dev, shapes), "teachers": lambda: check_teachers(dev, shapes)}
    with tempfile.TemporaryDirectory(prefix="pairdistill-selfcheck-", dir=work) as tmp:
        checks["colbert"] = lambda: check_colbert(dev, shapes, Path(tmp))
        for name in parts:
            start = time.monotonic()
            try:
                report[name] = checks[name]()
            except ImportError as exc:
                report[name] = {"status": "skipped", "reason": f"missing {exc.name or exc}"}
            except Exception as exc:  # noqa: BLE001 - one failing part must not hide the others' figures
                report[name] = {"status": "failed", "error": f"{type(exc).__name__}: {exc}",
                                "traceback": traceback.format_exc().splitlines()[-6:]}
            report[name]["wall_s"] = round(time.monotonic() - start, 1)
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    text = json.dumps(report, indent=1, default=str)
    if out:
        Path(out).write_text(text + "\n")
    print(text, flush=True)
    return report
