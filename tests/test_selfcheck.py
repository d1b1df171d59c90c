"""`python -m pairdistill selfcheck`: its parts run on a CPU at --small shapes, and a missing
colbert-ai is reported as skipped, not as a failure."""

from __future__ import annotations

import json
import sys

from pairdistill import selfcheck


def test_small_training_and_teacher_checks_write_their_figures(tmp_path):
    report = selfcheck.run("cpu", small=True, out=tmp_path / "selfcheck.json", parts=("train", "teachers"))
    assert json.loads((tmp_path / "selfcheck.json").read_text())["train"]["status"] == "ok"
    train = report["train"]
    assert train["precision"] == "bf16" and [r["micro_batch"] for r in train["runs"]] == [2, 4, 8]
    assert all(r["seconds_per_step"] > 0 and r["peak_memory_mb"] > 0 for r in train["runs"])
    assert all(0 < r["loss"] < 100 for r in train["runs"])
    assert report["teachers"]["cross_encoder"]["pairs_per_s"] > 0 and report["teachers"]["duot5"]["pairs_per_s"] > 0


def test_without_colbert_ai_the_indexing_check_is_skipped(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "colbert", None)  # import colbert now raises ImportError
    report = selfcheck.run("cpu", small=True, parts=("colbert",), work=tmp_path)
    assert report["colbert"]["status"] == "skipped" and "colbert-ai is not installed" in report["colbert"]["reason"]
