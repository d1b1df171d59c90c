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


def test_the_memory_table_picks_the_largest_micro_batch_that_fits():
    import pandas as pd

    from pairdistill.bench import train_memory as bench

    rows = pd.DataFrame({"model": "bert-base", "precision": "bf16", "grad_checkpointing": False, "nway": 8,
                         "m": [1, 2], "saved_for_backward_mb": [1024.0, 2048.0], "peak_mb": [3000.0, 4200.0],
                         "parameters": 110_000_000})
    (row,) = bench.fit_table(rows, target_nway=64, batch_size=32, doc_maxlen=180).to_dict("records")
    assert row["per_query_gb_at_nway_64"] == 8.0  # 1 GB per query at 8 passages -> 8 GB at 64
    fixed, part = row["fixed_gb"], row["batch_part_gb"]
    for gb in bench.GPU_GB:
        k = row[f"micro_batch_{gb}gb"]
        assert fixed + part + k * 8 * bench.TRANSIENT <= 0.9 * gb
        assert k == 32 or fixed + part + 2 * k * 8 * bench.TRANSIENT > 0.9 * gb
    assert "EXTRAPOLATED" in bench.markdown(pd.DataFrame([row]), device="cpu", target_nway=64, doc_maxlen=180,
                                            batch_size=32)
