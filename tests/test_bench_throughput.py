"""``bench inference`` and ``bench teacher-throughput`` end to end on tiny models and a handful of
passages: each runs and prints, last, one JSON line with its keys."""

from __future__ import annotations

import importlib.util
import json

import pytest

from pairdistill.bench.__main__ import main


@pytest.fixture(scope="module")
def beir(tmp_path_factory):
    """A BEIR-layout collection of 24 passages and 6 test queries, two judged passages each."""
    d = tmp_path_factory.mktemp("beir")
    words = "cell protein gene virus vaccine immune tumour blood brain heart lung drug".split()
    with open(d / "corpus.jsonl", "w") as fh:
        for i in range(24):
            text = " ".join(words[(i + k) % len(words)] for k in range(5 + i % 7))
            fh.write(json.dumps({"_id": f"d{i}", "title": f"t{i}", "text": text}) + "\n")
    with open(d / "queries.jsonl", "w") as fh:
        for q in range(6):
            fh.write(json.dumps({"_id": f"q{q}", "text": f"{words[q]} {words[q + 3]}?"}) + "\n")
    (d / "qrels").mkdir()
    rows = [f"q{q}\td{(3 * q + k) % 24}\t1" for q in range(6) for k in range(2)]
    (d / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(rows) + "\n")
    return d


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_inference_bench_prints_its_json_last(capsys, beir, tiny_bert_dir, tmp_path):
    assert main(["inference", "--model", tiny_bert_dir, "--data", str(beir), "--passages", "16",
                 "--queries", "4", "--backends", "torch", "--rounds", "1", "--batch-size", "8",
                 "--cache-dir", str(tmp_path / "cache"), "--threads", "1"]) == 0
    result = last_json(capsys.readouterr().out)
    assert {"ratio", "backend", "rows"} <= set(result)
    assert result["backend"].count("/") == 2
    names = [r["name"] for r in result["rows"]]
    assert names[0] == "torch/fp32/none" and {"torch/bf16/none", "torch/fp32/int8"} <= set(names)
    ref = result["rows"][0]
    assert ref["max_abs_diff_pooled"] == 0.0 and ref["spearman_mean"] == pytest.approx(1.0)
    assert all(r["tokens_per_s"] > 0 for r in result["rows"] if not r.get("skipped"))


def test_an_unavailable_backend_is_a_skipped_row_with_its_reason(capsys, beir, tiny_bert_dir, tmp_path,
                                                                 monkeypatch):
    from pairdistill import inference

    monkeypatch.setattr(inference, "_missing", lambda module: module in ("onnx", "onnxruntime"))
    assert main(["inference", "--model", tiny_bert_dir, "--data", str(beir), "--passages", "8", "--queries", "2",
                 "--backends", "torch/fp32/none,onnx/fp32/none", "--rounds", "1", "--threads", "1",
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    rows = {r["name"]: r for r in last_json(capsys.readouterr().out)["rows"]}
    assert "onnx" in rows["onnx/fp32/none"]["skipped"] and "not installed" in rows["onnx/fp32/none"]["skipped"]


def test_teacher_throughput_prints_its_json_last(capsys, beir, tiny_cross_encoder_dir):
    peer = importlib.util.find_spec("sentence_transformers") is not None
    assert main(["teacher-throughput", "--model", tiny_cross_encoder_dir, "--pairwise-model", tiny_cross_encoder_dir,
                 "--data", str(beir), "--pairs", "12", "--per-query", "3", "--chunk", "6", "--rounds", "1",
                 "--backends", "torch/fp32/none", "--peer-backends", "torch", "--threads", "1"]) == 0
    result = last_json(capsys.readouterr().out)
    assert {"ratio_torch", "ratio_fastest", "rows", "pairwise_rows"} <= set(result)
    assert result["ratio_fastest"] is None and result["message"]
    rows = {r["name"]: r for r in result["rows"]}
    assert rows["ours torch/fp32/none"]["pairs_per_s"] > 0
    if peer:
        assert result["ratio_torch"] > 0
        assert rows["CrossEncoder torch"]["max_abs_diff_vs_ours_torch_fp32"] <= 1e-4
    else:
        assert result["ratio_torch"] is None and "not installed" in result["message"]
    assert result["pairwise_rows"][0]["family"] == "bert-pairwise"
    assert result["pairwise_rows"][0]["inputs"] == 12


def test_teacher_throughput_without_a_model_builds_one_and_says_so(capsys, beir, monkeypatch, tiny_cross_encoder_dir):
    from pairdistill.bench import teacher_throughput

    built = []

    def fake_build(base, out):  # MiniLM itself is slow on CPU: the tiny one stands in for it
        built.append(out.name)
        return tiny_cross_encoder_dir
    monkeypatch.setattr(teacher_throughput, "build_classifier", fake_build)
    assert main(["teacher-throughput", "--data", str(beir), "--pairs", "6", "--per-query", "3", "--rounds", "1",
                 "--backends", "torch/fp32/none", "--no-peer", "--threads", "1"]) == 0
    result = last_json(capsys.readouterr().out)
    assert built == ["cross-encoder", "bert-pairwise"]
    assert any("untrained head" in n for n in result["notes"])
    assert result["ratio_torch"] is None and "not measured" in result["message"]
