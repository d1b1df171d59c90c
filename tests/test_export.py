"""pairdistill export: a round's teacher data as a Hugging Face dataset directory that PyLate trains
from, and PyLate reading our ColBERT checkpoints. The end-to-end part exports conftest.py's tiny
fusion run (a copy of its workdir, hard-linked, so the shared run stays as it is)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from pairdistill import cli, export, io, runtime, synthetic
from pairdistill.data import passage_text
from pairdistill.errors import InputError

from workflow import DATA_DIR, dry_run, snakemake

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_pylate = pytest.mark.skipif(importlib.util.find_spec("pylate") is None
                                  or importlib.util.find_spec("sentence_transformers") is None,
                                  reason="pylate / sentence-transformers are not installed "
                                         "(pip install --no-deps pylate==1.6.0 sentence-transformers==5.3.0)")
needs_scifact = pytest.mark.skipif(not (DATA_DIR / "scifact").is_dir(), reason="SciFact not found")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def load(path, config, tmp_path):
    import datasets

    return datasets.load_dataset(str(path), config, split="train", cache_dir=str(tmp_path / "hf-cache"))


# ---------------------------------------------------------------- synthetic rounds (fast)


@pytest.fixture(scope="module")
def synthetic_round(tmp_path_factory):
    d = tmp_path_factory.mktemp("synthetic-round")
    return synthetic.write_training_inputs(d, n_queries=60, n_docs=500, k=12, pairs_per_query=5, seed=0)


def export_synthetic(paths, out, **kw):
    return export.export(1, out=str(out), results=str(out.parent), top_k=12, pairs_per_query=5,
                         **{f"{n}_path": str(paths[n]) for n in ("pointwise", "pairwise", "corpus", "queries")}, **kw)


def test_the_export_is_the_round_regrouped(synthetic_round, tmp_path):
    info = export_synthetic(synthetic_round, tmp_path / "out")
    out = tmp_path / "out"
    pw = pd.read_parquet(synthetic_round["pointwise"]).sort_values(["query_id", "teacher_rank"])
    train = pd.read_parquet(out / export.FILES["train"])
    assert len(train) == pw["query_id"].nunique() == info["rows"]["train"] == 60
    want = {q: (g["doc_id"].tolist(), g["teacher_score"].tolist()) for q, g in pw.groupby("query_id")}
    for q, docs, scores in train.itertuples(index=False):
        assert (list(docs), list(scores)) == want[q]
    pairs = pd.read_parquet(out / export.FILES["pairs"])
    src = pd.read_parquet(synthetic_round["pairwise"])
    assert list(pairs.columns) == ["query_id", "document_id_a", "document_id_b", "prob", "p_ab", "p_ba"]
    assert pairs["document_id_a"].tolist() == src["doc_a"].tolist() and np.array_equal(pairs["prob"], src["prob"])
    corpus = pd.read_parquet(synthetic_round["corpus"]).set_index("doc_id")
    documents = pd.read_parquet(out / export.FILES["documents"])
    used = set(pw["doc_id"]) | set(src["doc_a"]) | set(src["doc_b"])
    assert set(documents["document_id"]) == used and len(documents) == len(used)
    for d, text in documents.head(20).itertuples(index=False):
        assert text == passage_text(corpus.at[d, "title"], corpus.at[d, "text"])
    queries = pd.read_parquet(out / export.FILES["queries"])
    assert sorted(queries["query_id"]) == sorted(want)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_small_batches_give_the_same_files(synthetic_round, tmp_path):
    """A query's rows split across batches (7 rows at a time, 12 a query) make one list all the same."""
    export_synthetic(synthetic_round, tmp_path / "a")
    export_synthetic(synthetic_round, tmp_path / "b", batch_rows=7)
    for name in export.CONFIGS:
        a, b = (pq.read_table(tmp_path / x / export.FILES[name]) for x in "ab")
        assert a.equals(b), name


def test_no_whole_file_frame_is_read(synthetic_round, tmp_path, monkeypatch):
    """The rows are streamed: reading a whole artifact (as a frame or a table) fails the export."""
    def refuse(*a, **k):
        raise AssertionError("a whole file was read")

    monkeypatch.setattr(io, "read_table", refuse)
    monkeypatch.setattr(pq, "read_table", refuse)
    monkeypatch.setattr(pd, "read_parquet", refuse)
    export_synthetic(synthetic_round, tmp_path / "out")
    assert (tmp_path / "out" / "README.md").is_file()


def test_each_config_loads_with_datasets_offline(synthetic_round, tmp_path):
    export_synthetic(synthetic_round, tmp_path / "out")
    rows = {name: load(tmp_path / "out", name, tmp_path).num_rows for name in export.CONFIGS}
    assert rows == {"train": 60, "queries": 60, "documents": len(pd.read_parquet(tmp_path / "out" / export.FILES["documents"])),
                    "pairs": 300}
    sample = load(tmp_path / "out", "train", tmp_path)[0]
    assert len(sample["document_ids"]) == len(sample["scores"]) == 12


def test_a_round_not_run_is_one_line(tmp_path, capsys):
    assert cli.main(["export", "--iteration", "3", "--results", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: {tmp_path}/results/iter-3/pointwise.parquet: iteration 3 was not run "
                   "(no teacher scores; run `snakemake --config iteration=3` first)")
    assert not (tmp_path / "results").exists()


def test_an_export_directory_holding_other_files_is_refused(synthetic_round, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match=r"already holds notes.txt, which an export does not write"):
        export_synthetic(synthetic_round, out)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    (out / "notes.txt").unlink()
    export_synthetic(synthetic_round, out)
    export_synthetic(synthetic_round, out)  # a previous export is replaced
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "data"]


def test_a_passage_without_text_is_named_and_nothing_is_written(synthetic_round, tmp_path):
    corpus = pd.read_parquet(synthetic_round["corpus"])
    pw = pd.read_parquet(synthetic_round["pointwise"])
    gone = sorted(set(pw["doc_id"]))[3]
    query = pw.loc[pw["doc_id"] == gone, "query_id"].iloc[0]
    io.write_table(corpus[corpus["doc_id"] != gone], "corpus", tmp_path / "corpus.parquet")
    paths = {**synthetic_round, "corpus": tmp_path / "corpus.parquet"}
    with pytest.raises(InputError) as err:
        export_synthetic(paths, tmp_path / "out")
    assert str(err.value) == (f"{synthetic_round['pointwise']}: passage {gone!r} (of query {query!r}) has no text "
                              f"in {tmp_path / 'corpus.parquet'} (1 passages without one)")
    assert "\n" not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.parquet"]  # no directory, no temporary


def test_a_split_rows_query_and_contradicting_settings_are_refused(synthetic_round, tmp_path):
    pw = pd.read_parquet(synthetic_round["pointwise"])
    io.write_table(pd.concat([pw.iloc[:6], pw.iloc[24:], pw.iloc[6:24]]), "pointwise", tmp_path / "pw.parquet")
    with pytest.raises(InputError, match=r"the rows of query 'q0' are not contiguous"):
        export_synthetic({**synthetic_round, "pointwise": tmp_path / "pw.parquet"}, tmp_path / "out")
    with pytest.raises(InputError, match=r"holds a pair \d+ ranks apart, not below delta 2"):
        export_synthetic(synthetic_round, tmp_path / "out", delta=2)
    assert not (tmp_path / "out").exists()


def test_a_query_with_two_texts_needs_the_split(synthetic_round, tmp_path):
    q = pd.read_parquet(synthetic_round["queries"])
    other = q.head(3).assign(split="dev", text="another text")
    io.write_table(pd.concat([q, other]), "queries", tmp_path / "queries.parquet")
    paths = {**synthetic_round, "queries": tmp_path / "queries.parquet"}
    with pytest.raises(InputError, match=r"query 'q0' has two texts .*--split"):
        export_synthetic(paths, tmp_path / "out")
    export_synthetic(paths, tmp_path / "out", split="train")
    got = pd.read_parquet(tmp_path / "out" / export.FILES["queries"]).set_index("query_id")["text"]
    assert got["q0"] == q.set_index("query_id").at["q0", "text"]


def test_the_bench_reports_time_and_memory(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pairdistill.bench", "export", "--fraction", "0.0002"],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["exported_rows"]["train"] == got["queries"] == 160
    assert got["exported_rows"]["pairs"] == got["pairwise_rows"] and got["seconds"] > 0 and got["peak_rss_mb"] > 0


# ---------------------------------------------------------------- the tiny end-to-end run


@pytest.fixture(scope="module")
def exported(fusion_run, tmp_path_factory):
    """``snakemake export`` on a hard-linked copy of the shared tiny run: only the export runs."""
    work = tmp_path_factory.mktemp("export-run") / "work"
    shutil.copytree(fusion_run["workdir"], work, copy_function=os.link, symlinks=True)
    cfg = (fusion_run["config"],)
    assert [rule for rule, _ in dry_run(work, "export", configfiles=cfg)] == ["export_round"]  # nothing reruns
    snakemake(work, "--printshellcmds", "export", configfiles=cfg)  # a flag ends --configfile's files
    config = yaml.safe_load(fusion_run["config"].read_text())
    return {"work": work, "out": work / "results/export/iter-1", "config": config}


@pytest.mark.slow
@needs_scifact
def test_the_runs_export_holds_its_round(exported, tmp_path):
    w, out = exported["work"], exported["out"]
    files = [p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()]
    assert sorted(f for f in files if not f.startswith(".snakemake")) == sorted(["README.md", *export.FILES.values()])
    pw = io.read_table(w / "results/iter-1/pointwise.parquet", "pointwise").sort_values(["query_id", "teacher_rank"])
    train = load(out, "train", tmp_path).to_pandas()
    assert len(train) == pw["query_id"].nunique()
    want = {q: g["doc_id"].tolist() for q, g in pw.groupby("query_id")}
    assert all(list(d) == want[q] for q, d in zip(train["query_id"], train["document_ids"]))
    pairs = load(out, "pairs", tmp_path)
    assert pairs.num_rows == len(io.read_table(w / "results/iter-1/pairwise.parquet", "pairwise"))


@pytest.mark.slow
@needs_scifact
def test_the_card_names_the_teachers_the_retriever_and_the_settings(exported):
    w, out, config = exported["work"], exported["out"], exported["config"]
    text = (out / "README.md").read_text()
    header = yaml.safe_load(text.split("---\n")[1])
    assert [c["config_name"] for c in header["configs"]] == list(export.CONFIGS)
    assert all(c["data_files"][0]["path"] == export.FILES[c["config_name"]] for c in header["configs"])
    for kind in ("pointwise", "pairwise"):
        teacher = json.loads(io.read_metadata(w / f"results/iter-1/{kind}.parquet")["teacher"])
        assert f"family `{teacher['family']}`, token budget {teacher['max_length']}, " \
               f"weights fingerprint `{teacher['fingerprint']}`" in text
    assert f"weights fingerprint `{runtime.model_fingerprint(str(w / 'results/iter-0/checkpoint'))}`" in text
    assert f"**Top-k**: {config['retrieve']['top_k']} (" in text
    assert f"delta {config['pairs']['delta']} (" in text and f"pairs per query {config['pairs']['per_query']} (" in text


@pytest.mark.slow
@needs_scifact
@needs_pylate
def test_pylate_trains_a_distillation_step_from_the_export(exported, minilm_dir, tmp_path):
    import torch
    from pylate import losses, models, utils
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments

    out = exported["out"]
    train, queries, documents = (load(out, c, tmp_path) for c in ("train", "queries", "documents"))
    n_ways = min(len(d) for d in train["document_ids"])
    train.set_transform(utils.KDProcessing(queries=queries, documents=documents, n_ways=n_ways).transform)
    first = train[0]  # what PyLate will train on: our query and passage texts and teacher scores
    q_text = dict(zip(queries["query_id"], queries["text"]))
    d_text = dict(zip(documents["document_id"], documents["text"]))
    assert first["query"] == q_text[first["query_id"]] and first["documents"] == [d_text[d] for d in first["document_ids"]]
    model = models.ColBERT(minilm_dir, device="cpu", query_length=16, document_length=64)
    before = [p.detach().clone() for p in model.parameters()]
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path / "st"), max_steps=1, per_device_train_batch_size=4, learning_rate=1e-4,
        logging_steps=1, report_to=[], save_strategy="no", use_cpu=True, remove_unused_columns=False, seed=0)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=train,
                                         loss=losses.Distillation(model=model),
                                         data_collator=utils.ColBERTCollator(tokenize_fn=model.tokenize))
    result = trainer.train()
    step = [h for h in trainer.state.log_history if "loss" in h][0]["loss"]
    print(f"PyLate distillation step on the export: loss {result.training_loss:.6f} (n_ways {n_ways})")
    assert result.global_step == 1 and math.isfinite(result.training_loss) and result.training_loss > 0
    assert math.isclose(step, result.training_loss, rel_tol=1e-3)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.slow
@needs_scifact
@needs_pylate
def test_pylate_scores_our_checkpoint_as_our_maxsim(exported, tmp_path):
    """Round 1's ColBERT checkpoint, loaded as it is by PyLate, scores 10 (query, passage) pairs of
    the export as our training's MaxSim does (colbert-ai's encoders), within 1e-4."""
    import torch
    from pylate import models

    from pairdistill.train.loop import COLBERT

    w, out = exported["work"], exported["out"]
    ckpt = str(w / "results/iter-1/checkpoint")
    train = load(out, "train", tmp_path).select(range(5))
    q_text = dict(zip(*(load(out, "queries", tmp_path)[c] for c in ("query_id", "text"))))
    d_text = dict(zip(*(load(out, "documents", tmp_path)[c] for c in ("document_id", "text"))))
    pairs = [(q_text[q], d_text[d]) for q, ds in zip(train["query_id"], train["document_ids"]) for d in (ds[0], ds[-1])]
    assert len(pairs) == 10
    student = exported["config"]["student"]
    ours_model = COLBERT.load(ckpt, query_maxlen=student["query_maxlen"], doc_maxlen=student["doc_maxlen"])
    ours_model.eval()
    q_tok, d_tok = COLBERT.tokenizers(ours_model)
    with torch.no_grad():
        Q, D, D_mask = COLBERT.encode(ours_model, *q_tok.tensorize([q for q, _ in pairs]),
                                      *d_tok.tensorize([d for _, d in pairs]))
        ours = COLBERT.score_aligned(Q, D, D_mask, 1).flatten()
    theirs_model = models.ColBERT(ckpt, device="cpu")
    assert (theirs_model.query_length, theirs_model.document_length) == (student["query_maxlen"], student["doc_maxlen"])
    assert (theirs_model.query_prefix, theirs_model.document_prefix) == ("[unused0]", "[unused1]")
    with torch.no_grad():
        qe = theirs_model.encode([q for q, _ in pairs], is_query=True)
        de = theirs_model.encode([d for _, d in pairs], is_query=False)
    theirs = torch.stack([(torch.as_tensor(q) @ torch.as_tensor(d).T).max(dim=1).values.sum() for q, d in zip(qe, de)])
    diff = (ours - theirs).abs().max().item()
    print(f"PyLate vs our MaxSim on 10 pairs of round 1's checkpoint: max |diff| {diff:.2e}")
    assert ours.abs().min() > 0 and diff <= 1e-4
