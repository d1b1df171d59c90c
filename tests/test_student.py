"""The ColBERT student through colbert-ai: checkpoint, index, search, and the git guard."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from pairdistill.students import colbert
from pairdistill.students import runs


@pytest.fixture(scope="module")
def corpus(scifact_head):
    return scifact_head


@pytest.fixture(scope="module")
def checkpoint(tiny_colbert_checkpoint):
    return tiny_colbert_checkpoint


def test_checkpoint_describes_itself(checkpoint):
    meta = json.loads((checkpoint / "artifact.metadata").read_text())
    assert meta["dim"] == 16 and meta["doc_maxlen"] == 32 and meta["query_maxlen"] == 16
    assert meta["model_name"] is None and meta["checkpoint"] is None  # no path to a base model
    assert "git_branch" not in meta["meta"]  # the GitPython lookup is replaced
    assert {"config.json", "model.safetensors", "vocab.txt"} <= {p.name for p in checkpoint.iterdir()}


def test_init_checkpoint_is_seeded(checkpoint, tmp_path, tiny_bert_dir):
    from safetensors.torch import load_file

    again = tmp_path / "again"
    colbert.init_checkpoint(tiny_bert_dir, again, dim=16, query_maxlen=16, doc_maxlen=32, seed=0)
    a, b = load_file(checkpoint / "model.safetensors"), load_file(again / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_pca_projection_keeps_more_of_the_token_geometry(checkpoint, corpus, tmp_path, tiny_bert_dir):
    from safetensors.torch import load_file

    _, texts = corpus
    out = tmp_path / "pca"
    colbert.init_checkpoint(tiny_bert_dir, out, dim=16, query_maxlen=16, doc_maxlen=32, seed=0,
                            projection="pca", passages=texts[:40])
    pca = load_file(out / "model.safetensors")["linear.weight"]
    rnd = load_file(checkpoint / "model.safetensors")["linear.weight"]
    assert pca.shape == rnd.shape == (16, 32)
    torch.testing.assert_close(pca @ pca.T, torch.eye(16), atol=1e-4, rtol=0)  # orthonormal rows
    # the share of the passages' token energy each projection keeps: PCA's is the most any 16 rows can
    from colbert.modeling.tokenization import DocTokenizer

    model = colbert.load_student(str(out))
    ids, mask = DocTokenizer(model.colbert_config).tensorize(texts[40:60])
    with torch.no_grad():
        tokens = model.bert(ids, attention_mask=mask)[0][mask.bool()]

    def kept(w):
        w = torch.linalg.qr(w.T).Q.T  # the same subspace, orthonormal rows
        return float((tokens @ w.T).pow(2).sum() / tokens.pow(2).sum())

    assert kept(pca) > kept(rnd)
    with pytest.raises(ValueError, match="brings its trained projection"):  # a ColBERT checkpoint as the base
        colbert.init_checkpoint(str(out), tmp_path / "y", dim=16, query_maxlen=16, doc_maxlen=32, seed=0,
                                projection="pca", passages=texts[:40])
    with pytest.raises(ValueError, match="unknown projection"):
        colbert.init_checkpoint(tiny_bert_dir, tmp_path / "x", dim=16, query_maxlen=16, doc_maxlen=32, seed=0,
                                projection="svd")


def test_reusing_sample_embeddings_does_not_change_the_index(checkpoint, corpus, tmp_path, capsys):
    df, texts = corpus
    stats, last_progress = {}, {}
    for reuse in (True, False):
        stats[reuse] = colbert.build_index(checkpoint, df, texts, tmp_path / f"idx-{reuse}", nbits=2,
                                           doc_maxlen=32, kmeans_niters=2, reuse_sample_embeddings=reuse, seed=1)
        lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[index: encode]")]
        last_progress[reuse] = lines[-1].split()[2]
    assert stats[True] == stats[False]
    # with reuse every passage is encoded once; without, the sample (here all 80) twice
    assert last_progress == {True: "80/80", False: "160/160"}
    codes = [torch.load(tmp_path / f"idx-{r}" / "0.codes.pt") for r in (True, False)]
    assert (codes[0] == codes[1]).float().mean() > 0.999
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx-False", "idx-True"]  # no temporary left


def test_num_partitions_is_a_cap(checkpoint, corpus, tmp_path):
    """index.num_partitions caps colbert-ai's count: a collection whose own count is smaller keeps it."""
    import math
    df, texts = corpus
    stats = colbert.build_index(checkpoint, df, texts, tmp_path / "idx", nbits=2, doc_maxlen=32, kmeans_niters=1,
                                num_partitions=1 << 20)
    assert stats["num_partitions"] == 2 ** math.floor(math.log2(16 * math.sqrt(stats["num_embeddings"])))


def test_search_returns_document_ids(checkpoint, corpus, tmp_path):
    df, texts = corpus
    stats = colbert.build_index(checkpoint, df, texts, tmp_path / "idx", nbits=2, doc_maxlen=32, kmeans_niters=2,
                                num_partitions=16)
    # the centroid count is ours, not colbert-ai's rule, and the plan on disk says so
    assert stats["num_partitions"] == 16
    assert json.loads((tmp_path / "idx" / "plan.json").read_text())["num_partitions"] == 16
    from colbert.indexing.collection_indexer import CollectionIndexer
    assert CollectionIndexer.setup.__name__ == "setup" and CollectionIndexer.setup.__module__.startswith("colbert")
    queries = {"q-a": texts[3][:60], "q-b": texts[10][:60]}
    run = colbert.search(checkpoint, tmp_path / "idx", queries, k=5, ncells=2, centroid_score_threshold=0.45,
                         ndocs=256)
    assert set(run["query_id"]) == {"q-a", "q-b"}
    assert run.groupby("query_id")["rank"].apply(list).tolist() == [[1, 2, 3, 4, 5]] * 2
    assert set(run["doc_id"]) <= set(df["doc_id"])
    assert (run.groupby("query_id")["score"].apply(lambda s: s.is_monotonic_decreasing)).all()


def test_a_collections_query_length_and_self_match_rule_travel_with_its_index(checkpoint, corpus, tmp_path,
                                                                               monkeypatch):
    """BEIR's ArguAna: 300-token queries that are also documents of the corpus. The index keeps both,
    so every search of it encodes queries that long and drops the query's own document."""
    from colbert.modeling.checkpoint import Checkpoint

    df, texts = corpus
    colbert.build_index(checkpoint, df, texts, tmp_path / "idx", nbits=2, doc_maxlen=32, kmeans_niters=2,
                        num_partitions=16, query_maxlen=40, drop_self_matches=True)
    assert json.loads((tmp_path / "idx" / "metadata.json").read_text())["config"]["query_maxlen"] == 40
    lengths = []
    encode = Checkpoint.queryFromText

    def spy(self, *args, **kw):
        lengths.append(self.query_tokenizer.query_maxlen)
        return encode(self, *args, **kw)

    monkeypatch.setattr(Checkpoint, "queryFromText", spy)
    own = df["doc_id"][3]
    queries = {own: texts[3], "other": texts[10][:60]}  # the first query is document 3 itself
    kw = dict(k=5, ncells=2, centroid_score_threshold=0.45, ndocs=256)
    run = colbert.search(checkpoint, tmp_path / "idx", queries, **kw)
    assert lengths and set(lengths) == {40}  # the checkpoint's own is 16
    assert own not in set(run.loc[run["query_id"] == own, "doc_id"])
    assert run.groupby("query_id")["rank"].apply(list).tolist() == [[1, 2, 3, 4, 5]] * 2
    # without the rule, the document is its own query's best hit
    (tmp_path / "idx" / runs.SEARCH_SETTINGS).write_text(json.dumps({"drop_self_matches": False}))
    kept = colbert.search(checkpoint, tmp_path / "idx", queries, **kw)
    assert kept.loc[(kept["query_id"] == own) & (kept["rank"] == 1), "doc_id"].tolist() == [own]


def test_drop_self_matches_reranks_and_keeps_k():
    run = pd.DataFrame({"query_id": ["a"] * 4 + ["b"] * 3, "doc_id": ["x", "a", "y", "z", "b", "a", "c"],
                        "rank": [1, 2, 3, 4, 1, 2, 3], "score": [9.0, 8, 7, 6, 5, 4, 3]})
    out = colbert.drop_self_matches(run, 3)
    assert out[["query_id", "doc_id", "rank"]].values.tolist() == [
        ["a", "x", 1], ["a", "y", 2], ["a", "z", 3], ["b", "a", 1], ["b", "c", 2]]


def test_stale_extension_lock_is_removed_and_a_fresh_one_kept(tmp_path):
    import os
    import time

    from pairdistill.students import colbert

    for name in ("decompress_residuals_cpp", "segmented_maxsim_cpp"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "lock").touch()
    old = tmp_path / "decompress_residuals_cpp" / "lock"
    os.utime(old, (time.time() - 3600, time.time() - 3600))  # left by a job killed an hour ago
    assert colbert.clear_stale_extension_locks(tmp_path) == [old]
    assert not old.exists() and (tmp_path / "segmented_maxsim_cpp" / "lock").exists()
