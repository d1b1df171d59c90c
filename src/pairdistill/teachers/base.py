"""What every teacher family shares: locating a model, its tokenizer, the dtype it scores in,
token budgets, and length-sorted batched inference that puts scores back in input order."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .. import runtime
from ..progress import Progress

META_FILE = "pairdistill_teacher.json"
DEFAULT_MAX_LENGTH = {"pointwise": 256, "pairwise": 320}

# At most this share of the token budget goes to the query, so a long query cannot squeeze the
# passages out (MS MARCO queries are short; this only bites on odd inputs).
QUERY_SHARE = {"pointwise": 1 / 2, "pairwise": 1 / 3}


def _locate(model: str) -> str:
    """Resolve a model setting to a local location; FileNotFoundError names it when absent."""
    return runtime.resolve_model(model)


def read_meta(path: str) -> dict | None:
    """The ``pairdistill_teacher.json`` of a model directory, or None (hub models have none)."""
    meta = Path(path) / META_FILE
    if meta.is_file():
        return json.loads(meta.read_text())
    return None


def _model_type(path: str) -> str:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path).model_type
    except OSError as exc:  # offline and not cached: report it as a missing model
        raise FileNotFoundError(f"{path}: model not found (offline; not a directory and not "
                                f"in the local Hugging Face cache)") from exc


def load_tokenizer(path: str):
    """AutoTokenizer, falling back to the slow one when the fast one cannot be built.

    castorini's T5 checkpoints ship only ``spiece.model``; converting that to a fast tokenizer
    needs protobuf, which the offline environment may lack, while the slow one needs only
    sentencepiece.
    """
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except ImportError:
        tokenizer = AutoTokenizer.from_pretrained(path, use_fast=False)
    # Silence two warnings that do not apply: passages are tokenised whole before budgets are
    # applied (never fed to the model that long), and pre-tokenised features are padded per
    # length-sorted batch on purpose. transformers skips a warning whose key is already set.
    tokenizer.deprecation_warnings["sequence-length-is-longer-than-the-specified-maximum"] = True
    tokenizer.deprecation_warnings["Asking-to-pad-a-fast-tokenizer"] = True
    return tokenizer


def scoring_precision(precision: str, kind: str, family: str, device: str | torch.device = "auto") -> str:
    """The dtype ``teachers.<kind>.precision`` scores in on this job's device: ``auto`` is bf16 on a
    GPU that has it, else fp32; fp16 without a GPU is a SettingError naming the key. The fusion
    families (BM25 and small bi-encoders) always score in fp32. Both the cache identity and the
    loaders ask this, so a score's recorded dtype is the one it was made in."""
    from ..train import resolve_precision

    if family.startswith("fusion"):
        return "fp32"
    dev = device if isinstance(device, torch.device) else runtime.device(device)
    return resolve_precision(precision, dev, key=f"teachers.{kind}.precision")


# --------------------------------------------------------------------------------------------
# Encoding: every function returns a list of un-padded feature dicts, one per input
# --------------------------------------------------------------------------------------------

def _token_ids(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text without special tokens (no truncation: budgets are applied later)."""
    if len(texts) == 0:
        return []
    return tokenizer(list(texts), add_special_tokens=False)["input_ids"]


def _truncate_texts(tokenizer, texts: Sequence[str], budgets: Sequence[int]) -> list[str]:
    """Cut each text to at most its budget of tokens, keeping the text itself verbatim.

    Fast tokenizers cut at the character offset where the budget-th token ends; slow ones
    fall back to detokenising the kept tokens. Texts within budget are returned unchanged.
    """
    texts = list(texts)
    if tokenizer.is_fast:
        enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        out = []
        for text, offsets, budget in zip(texts, enc["offset_mapping"], budgets):
            budget = max(int(budget), 1)
            out.append(text if len(offsets) <= budget else text[: offsets[budget - 1][1]])
        return out
    out = []
    for text, budget in zip(texts, budgets):
        tokens = tokenizer.tokenize(text)
        budget = max(int(budget), 1)
        out.append(text if len(tokens) <= budget else tokenizer.convert_tokens_to_string(tokens[:budget]))
    return out


def _split_features(enc) -> list[dict]:
    keys = [k for k in ("input_ids", "token_type_ids", "attention_mask") if k in enc]
    return [{k: enc[k][i] for k in keys} for i in range(len(enc["input_ids"]))]


# --------------------------------------------------------------------------------------------
# Batched inference
# --------------------------------------------------------------------------------------------

def _run_batched(features: list[dict], tokenizer, batch_size: int, forward: Callable,
                 dev: torch.device, progress_label: str | None, unit: str) -> np.ndarray:
    """``forward(padded batch) -> 1-d tensor`` over length-sorted batches, in input order.

    Longest batches run first, so a memory problem shows at once rather than at the end.
    """
    out = np.empty(len(features), dtype=np.float32)
    if not features:
        return out
    lengths = np.array([len(f["input_ids"]) for f in features])
    order = np.argsort(-lengths, kind="stable")
    progress = Progress(len(features), progress_label, unit=unit) if progress_label else None
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            batch = tokenizer.pad([features[i] for i in idx], return_tensors="pt")
            batch = {k: v.to(dev) for k, v in batch.items()}
            out[idx] = forward(batch).float().cpu().numpy()
            if progress:
                progress.update(len(idx))
    return out


def _check_lengths(*seqs: Sequence) -> None:
    if len({len(s) for s in seqs}) > 1:
        raise ValueError(f"inputs differ in length: {[len(s) for s in seqs]}")


def _t5_first_step_logits(model, batch: dict) -> torch.Tensor:
    """Vocabulary logits of the first decoding step (decoder fed only the start token)."""
    start = model.config.decoder_start_token_id
    dec = torch.full((batch["input_ids"].shape[0], 1), start, dtype=torch.long,
                     device=batch["input_ids"].device)
    return model(**batch, decoder_input_ids=dec).logits[:, 0, :]


@dataclass
class _LoadedTeacher:
    model: object
    tokenizer: object
    family: str
    max_length: int
    batch_size: int
    device: torch.device
    path: str


def _in_precision(model, precision: str, dev: torch.device, kind: str, family: str):
    """The teacher in the dtype :func:`scoring_precision` gives ``precision`` on ``dev``."""
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    return model.to(dtype[scoring_precision(precision, kind, family, dev)])
