"""A round's teacher data as a Hugging Face dataset directory, in the layout PyLate trains from.

``pairdistill export --iteration N`` (``snakemake export``) writes ``results/export/iter-N/``::

    README.md              the dataset card: YAML header declaring the configs, prose saying
                           which teachers, retriever and pair settings made the data
    data/train.parquet     query_id, document_ids (list), scores (list): the pointwise teacher's
                           scores of the round's passages per query, best first (PyLate's KD layout)
    data/queries.parquet   query_id, text
    data/documents.parquet document_id, text (title and text as every model of the pipeline sees them)
    data/pairs.parquet     query_id, document_id_a, document_id_b, prob, p_ab, p_ba: the pairwise
                           teacher's preferences (P(a > b | q), symmetrised when both orders were scored)

``datasets.load_dataset(dir, "train")`` (or ``"queries"``, ``"documents"``, ``"pairs"``) loads each,
and ``pylate.utils.KDProcessing(queries, documents)`` turns ``train`` into PyLate's distillation
samples. Every file is streamed a Parquet batch at a time: no whole-file frame of the pointwise or
pairwise rows is built (memory follows the number of queries and passages, not of rows), and the
directory is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import io, runtime
from .data import passage_text
from .errors import InputError

S, F32 = pa.string(), pa.float32()

CONFIGS = ("train", "queries", "documents", "pairs")
FILES = {name: f"data/{name}.parquet" for name in CONFIGS}
CARD = "README.md"
SCHEMAS = {
    "train": pa.schema([pa.field("query_id", S, nullable=False), pa.field("document_ids", pa.list_(S), nullable=False),
                        pa.field("scores", pa.list_(F32), nullable=False)]),
    "queries": pa.schema([pa.field("query_id", S, nullable=False), pa.field("text", S, nullable=False)]),
    "documents": pa.schema([pa.field("document_id", S, nullable=False), pa.field("text", S, nullable=False)]),
    "pairs": pa.schema([pa.field("query_id", S, nullable=False), pa.field("document_id_a", S, nullable=False),
                        pa.field("document_id_b", S, nullable=False), pa.field("prob", F32, nullable=False),
                        pa.field("p_ab", F32, nullable=False), pa.field("p_ba", F32)]),
}
BATCH_ROWS = io.ROW_GROUP_ROWS
TEXT_BATCH_ROWS = 4096


def _check_artifact(path: Path, name: str) -> None:
    if not path.is_file():
        raise InputError(path, f"no such file (the {name} artifact)")
    got = pq.read_schema(path).remove_metadata()
    if not got.equals(io.schema(name)):
        raise InputError(path, f"not a {name} artifact (columns {', '.join(got.names)})")


def _batches(path: Path, columns: list[str], batch_rows: int) -> Iterator[pa.Table]:
    # pre_buffer (the default) keeps what it read of the file: 650 MB instead of 330 MB over the
    # 1/10 MS MARCO corpus (335 MB of Parquet)
    for batch in pq.ParquetFile(path, pre_buffer=False).iter_batches(batch_size=batch_rows, columns=columns):
        yield pa.Table.from_batches([batch])


class _IdSet:
    """Distinct string ids collected a batch at a time, as Arrow arrays (a few bytes an id)."""

    def __init__(self):
        self.parts: list[pa.Array] = []
        self.pending = 0

    def add(self, values) -> None:
        part = pc.unique(values)
        self.parts.append(part.combine_chunks() if isinstance(part, pa.ChunkedArray) else part)
        self.pending += len(part)
        if self.pending > 1_000_000:
            self.parts, self.pending = [self.array()], 0

    def array(self) -> pa.Array:
        if not self.parts:
            return pa.array([], type=S)
        return pc.unique(pa.concat_arrays([p.cast(S) for p in self.parts]))


def _runs(tbl: pa.Table) -> np.ndarray:
    """Start offsets of the runs of equal ``query_id`` in ``tbl`` (0 first)."""
    qid = tbl["query_id"].combine_chunks()
    if len(qid) < 2:
        return np.zeros(min(len(qid), 1), dtype=np.int64)
    change = pc.not_equal(qid.slice(1), qid.slice(0, len(qid) - 1)).to_numpy(zero_copy_only=False)
    return np.concatenate([[0], np.flatnonzero(change) + 1]).astype(np.int64)


def _write_train(pointwise: Path, writer: pq.ParquetWriter, docs: _IdSet, queries: _IdSet,
                 batch_rows: int) -> dict:
    """``train`` rows, one per query (its passages best first by teacher rank), streamed from the
    pointwise file, whose rows of a query are contiguous (each shard sorted by query, shards
    disjoint); a query found in two places is an error, not a silently split list."""
    cols = ["query_id", "doc_id", "teacher_score", "teacher_rank", "retriever_rank", "cached"]
    done: set[str] = set()
    stats = {"rows": 0, "queries": 0, "min_list": None, "max_list": 0, "top_k": 0, "added_positives": 0, "cached": 0}
    carry = None

    def flush(part: pa.Table) -> None:
        starts = _runs(part)
        if not len(starts):
            return
        lengths = np.diff(np.append(starts, part.num_rows))
        run = np.repeat(np.arange(len(starts)), lengths)
        order = pc.sort_indices(pa.table({"run": run, "rank": part["teacher_rank"]}),
                                sort_keys=[("run", "ascending"), ("rank", "ascending")])
        part = part.take(order)
        qids = part["query_id"].combine_chunks().take(pa.array(starts)).to_pylist()
        for q in qids:
            if q in done:
                raise InputError(pointwise, f"the rows of query {q!r} are not contiguous (not a gathered pointwise file)")
            done.add(q)
        offsets = pa.array(np.append(starts, part.num_rows).astype(np.int32))
        doc_ids = part["doc_id"].combine_chunks().cast(S)
        writer.write_table(pa.table({
            "query_id": pa.array(qids, type=S),
            "document_ids": pa.ListArray.from_arrays(offsets, doc_ids),
            "scores": pa.ListArray.from_arrays(offsets, part["teacher_score"].combine_chunks().cast(F32)),
        }, schema=SCHEMAS["train"]))
        docs.add(doc_ids)
        stats["queries"] += len(qids)
        stats["min_list"] = int(min(lengths.min(), stats["min_list"] or lengths.min()))
        stats["max_list"] = int(max(lengths.max(), stats["max_list"]))

    for batch in _batches(pointwise, cols, batch_rows):
        stats["rows"] += batch.num_rows
        rr = batch["retriever_rank"]
        stats["top_k"] = max(stats["top_k"], pc.max(rr).as_py() or 0)
        stats["added_positives"] += rr.null_count
        stats["cached"] += int(pc.sum(batch["cached"].cast(pa.int64())).as_py() or 0)
        queries.add(batch["query_id"])
        tbl = batch if carry is None else pa.concat_tables([carry, batch])
        starts = _runs(tbl)
        last = int(starts[-1]) if len(starts) else 0
        flush(tbl.slice(0, last))  # the last query may go on in the next batch
        carry = tbl.slice(last)
    if carry is not None:
        flush(carry)
    if not stats["queries"]:
        raise InputError(pointwise, "no rows: nothing to export")
    return stats


def _write_pairs(pairwise: Path, writer: pq.ParquetWriter, docs: _IdSet, queries: _IdSet, batch_rows: int) -> dict:
    cols = ["query_id", "doc_a", "doc_b", "rank_a", "rank_b", "prob", "p_ab", "p_ba"]
    per_query: dict[str, int] = {}
    stats = {"rows": 0, "max_gap": 0, "both_orders": 0}
    for batch in _batches(pairwise, cols, batch_rows):
        stats["rows"] += batch.num_rows
        gap = pc.max(pc.abs(pc.subtract(batch["rank_a"], batch["rank_b"]))).as_py()
        stats["max_gap"] = max(stats["max_gap"], gap or 0)
        stats["both_orders"] += batch.num_rows - batch["p_ba"].null_count
        for item in pc.value_counts(batch["query_id"].combine_chunks()).to_pylist():
            per_query[item["values"]] = per_query.get(item["values"], 0) + item["counts"]
        queries.add(batch["query_id"])
        docs.add(batch["doc_a"])
        docs.add(batch["doc_b"])
        writer.write_table(pa.table({
            "query_id": batch["query_id"], "document_id_a": batch["doc_a"], "document_id_b": batch["doc_b"],
            "prob": batch["prob"], "p_ab": batch["p_ab"], "p_ba": batch["p_ba"],
        }).cast(SCHEMAS["pairs"]))
    counts = list(per_query.values()) or [0]
    stats.update(queries=len(per_query), max_per_query=max(counts), min_per_query=min(counts))
    return stats


def _write_queries(queries_path: Path, wanted: pa.Array, split: str | None, writer: pq.ParquetWriter,
                   batch_rows: int, pointwise: Path) -> int:
    seen: dict[str, int] = {}  # query id -> hash of its text: one text per id, or an error
    for batch in _batches(queries_path, ["split", "query_id", "text"], batch_rows):
        keep = pc.is_in(batch["query_id"], value_set=wanted)
        if split is not None:
            keep = pc.and_(keep, pc.equal(batch["split"], split))
        batch = batch.filter(keep)
        rows = []
        for q, text, s in zip(batch["query_id"].to_pylist(), batch["text"].to_pylist(), batch["split"].to_pylist()):
            if q in seen:
                if seen[q] != hash(text):
                    raise InputError(queries_path, f"query {q!r} has two texts (one in split {s!r}); "
                                                   "say which split the round trained on with --split")
                continue
            seen[q] = hash(text)
            rows.append((q, text))
        if rows:
            writer.write_table(pa.table({"query_id": [r[0] for r in rows], "text": [r[1] for r in rows]},
                                        schema=SCHEMAS["queries"]))
    if len(seen) < len(wanted):
        missing = pc.filter(wanted, pc.invert(pc.is_in(wanted, value_set=pa.array(list(seen), type=S))))
        first = sorted(missing.to_pylist())[0]
        raise InputError(pointwise, f"query {first!r} has no text in {queries_path}"
                                    f"{f' (split {split})' if split else ''} ({len(missing)} queries without one)")
    return len(seen)


def _write_documents(corpus_path: Path, wanted: pa.Array, writer: pq.ParquetWriter, batch_rows: int,
                     pointwise: Path) -> int:
    found = _IdSet()
    n = 0
    for batch in _batches(corpus_path, ["doc_id", "title", "text"], batch_rows):
        batch = batch.filter(pc.is_in(batch["doc_id"], value_set=wanted))  # one lookup table a batch
        # passages are long: a few thousand at a time bounds the Python strings of passage_text
        texts = []
        for lo in range(0, batch.num_rows, TEXT_BATCH_ROWS):
            part = batch.slice(lo, TEXT_BATCH_ROWS)
            texts.append(pa.array([passage_text(t, x) for t, x in zip(part["title"].to_pylist(),
                                                                       part["text"].to_pylist())], type=S))
        if texts:
            writer.write_table(pa.table({"document_id": batch["doc_id"], "text": pa.chunked_array(texts, type=S)},
                                        schema=SCHEMAS["documents"]))
        found.add(batch["doc_id"])
        n += batch.num_rows
    have = found.array()
    if len(have) < len(wanted):
        missing = pc.filter(wanted, pc.invert(pc.is_in(wanted, value_set=have)))
        first = sorted(missing.to_pylist())[0]
        raise InputError(pointwise, f"passage {first!r}{_a_query_of(pointwise, first)} has no text in {corpus_path} "
                                    f"({len(missing)} passages without one)")
    return n


def _a_query_of(pointwise: Path, doc_id: str) -> str:
    for batch in _batches(pointwise, ["query_id", "doc_id"], BATCH_ROWS):
        hit = batch.filter(pc.equal(batch["doc_id"], doc_id))
        if hit.num_rows:
            return f" (of query {hit['query_id'][0].as_py()!r})"
    return ""


def _teacher(path: Path) -> dict:
    raw = io.read_metadata(path).get("teacher")
    try:
        return json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        return {"identity": raw}


def _retriever(path: Path | None) -> dict:
    if path is None or not Path(path).exists():
        return {"path": str(path) if path else None}
    from .students import arch_of

    return {"path": str(path), "arch": arch_of(path), "fingerprint": runtime.model_fingerprint(str(path))}


def _check_out(out: Path) -> None:
    """An existing export directory may hold a previous export only (which is replaced)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise InputError(out, "exists and is not a directory")
    ours = {CARD, "data", *FILES.values()}
    for p in sorted(out.rglob("*")):
        rel = p.relative_to(out).as_posix()
        if rel not in ours and not rel.startswith(".snakemake"):
            raise InputError(out, f"already holds {rel}, which an export does not write; remove it or choose another --out")


def export(iteration: int, *, results: str = "results", out: str | None = None, pointwise_path: str | None = None,
           pairwise_path: str | None = None, corpus_path: str | None = None, queries_path: str | None = None,
           retriever: str | None = None, split: str | None = None, top_k: int | None = None,
           delta: int | None = None, pairs_per_query: int | None = None, batch_rows: int = BATCH_ROWS) -> dict:
    """A round's teacher data as a Hugging Face dataset directory PyLate trains from.

    Writes ``out`` (default ``<results>/export/iter-N``): the configs ``train`` (query_id,
    document_ids, scores: PyLate's knowledge-distillation layout, the pointwise teacher's scores),
    ``queries``, ``documents`` and ``pairs`` (the pairwise teacher's preferences), and a README.md
    dataset card naming the teachers, the retriever and the pair settings. Streamed a Parquet
    batch at a time; written under a temporary name and renamed when complete.

    Args:
        iteration: the distillation round to export (1 or more)
        results: the run's results directory, where the round's files are found by default
        out: the dataset directory (default <results>/export/iter-N); an existing one may hold a previous export only
        pointwise_path: the round's pointwise teacher scores (default <results>/iter-N/pointwise.parquet)
        pairwise_path: the round's pairwise teacher scores (default <results>/iter-N/pairwise.parquet)
        corpus_path: the passages (default <results>/data/corpus.parquet)
        queries_path: the queries (default <results>/data/queries.parquet)
        retriever: the checkpoint whose top-k the round scored (default <results>/iter-N-1/checkpoint)
        split: the queries' split the round trained on (needed only where a query id has texts in several)
        top_k: retrieve.top_k of the run, for the card (checked against the retriever ranks)
        delta: pairs.delta of the run, for the card (checked against the pairs' rank gaps)
        pairs_per_query: pairs.per_query of the run, for the card (checked against the pairs per query)
        batch_rows: rows read at a time from each file
    """
    if iteration < 1:
        raise InputError(f"{results}/iter-{iteration}", "iteration 0 has no teacher data (rounds are 1, 2, ...)")
    res = Path(results)
    pointwise = Path(pointwise_path or res / f"iter-{iteration}" / "pointwise.parquet")
    pairwise = Path(pairwise_path or res / f"iter-{iteration}" / "pairwise.parquet")
    corpus = Path(corpus_path or res / "data" / "corpus.parquet")
    queries = Path(queries_path or res / "data" / "queries.parquet")
    ret = Path(retriever) if retriever else res / f"iter-{iteration - 1}" / "checkpoint"
    target = Path(out or res / "export" / f"iter-{iteration}")
    if not pointwise.exists() and not pairwise.exists():
        raise InputError(pointwise, f"iteration {iteration} was not run (no teacher scores; "
                                    f"run `snakemake --config iteration={iteration}` first)")
    for path, name in ((pointwise, "pointwise"), (pairwise, "pairwise"), (corpus, "corpus"), (queries, "queries")):
        _check_artifact(path, name)
    _check_out(target)
    docs, qids = _IdSet(), _IdSet()
    with io.atomic_path(target, is_dir=True) as tmp:
        (tmp / "data").mkdir()
        writers = {name: pq.ParquetWriter(tmp / FILES[name], SCHEMAS[name]) for name in CONFIGS}
        try:
            train = _write_train(pointwise, writers["train"], docs, qids, batch_rows)
            pairs = _write_pairs(pairwise, writers["pairs"], docs, qids, batch_rows)
            n_queries = _write_queries(queries, qids.array(), split, writers["queries"], batch_rows, pointwise)
            n_docs = _write_documents(corpus, docs.array(), writers["documents"], batch_rows, pointwise)
        finally:
            for w in writers.values():
                w.close()
        settings = _settings(pointwise, pairwise, train, pairs, top_k, delta, pairs_per_query)
        info = {
            "iteration": iteration, "retriever": _retriever(ret), **settings,
            "pointwise_teacher": _teacher(pointwise), "pairwise_teacher": _teacher(pairwise),
            "sources": {"pointwise": str(pointwise), "pairwise": str(pairwise), "corpus": str(corpus),
                        "queries": str(queries)},
            "rows": {"train": train["queries"], "queries": n_queries, "documents": n_docs, "pairs": pairs["rows"]},
            "pointwise": train, "pairwise": pairs,
        }
        (tmp / CARD).write_text(card(info))
    print(f"exported round {iteration}: {train['queries']} queries, {train['rows']} pointwise scores, "
          f"{pairs['rows']} pairs, {n_docs} passages -> {target}", flush=True)
    return info


def _settings(pointwise: Path, pairwise: Path, train: dict, pairs: dict, top_k, delta, pairs_per_query) -> dict:
    """The retrieval and pair settings for the card: given ones checked against what the files hold."""
    if top_k is not None and train["top_k"] > top_k:
        raise InputError(pointwise, f"holds retriever rank {train['top_k']}, beyond top_k {top_k}")
    if delta is not None and pairs["max_gap"] >= delta:
        raise InputError(pairwise, f"holds a pair {pairs['max_gap']} ranks apart, not below delta {delta}")
    if pairs_per_query is not None and pairs["max_per_query"] > pairs_per_query:
        raise InputError(pairwise, f"holds {pairs['max_per_query']} pairs of one query, beyond pairs_per_query {pairs_per_query}")
    return {"top_k": top_k, "delta": delta, "pairs_per_query": pairs_per_query}


def _teacher_line(t: dict) -> str:
    if not t:
        return "not recorded in the file's metadata"
    known = ("family", "max_length", "fingerprint", "precision")
    parts = [f"family `{t.get('family', '?')}`", f"token budget {t.get('max_length', '?')}",
             f"weights fingerprint `{t.get('fingerprint', '?')}`", f"precision {t.get('precision', 'fp32')}"]
    parts += [f"{k} `{json.dumps(v) if not isinstance(v, str) else v}`" for k, v in sorted(t.items())
              if k not in known and k != "kind"]
    return ", ".join(parts)


def _setting(given, observed: str) -> str:
    return f"{given} ({observed})" if given is not None else f"not given to the export; {observed}"


def card(info: dict) -> str:
    """The README.md dataset card: YAML header declaring the four configs, then how the data was made."""
    it, r, pw, pr = info["iteration"], info["retriever"], info["pointwise"], info["pairwise"]
    header = ["---", f"pretty_name: PairDistill teacher data, round {it}",
              "task_categories:", "- text-retrieval", "tags:", "- knowledge-distillation", "- colbert", "- pylate",
              "- pairdistill", "configs:"]
    for name in CONFIGS:
        header += [f"- config_name: {name}", *(["  default: true"] if name == "train" else []),
                   "  data_files:", "  - split: train", f"    path: {FILES[name]}"]
    header.append("---")
    if r.get("fingerprint"):
        retriever = f"`{r['path']}` ({r['arch']}, weights fingerprint `{r['fingerprint']}`)"
    else:
        retriever = f"`{r['path']}` (not found when exported: no fingerprint)"
    both = pr["both_orders"]
    order = ("both orders scored for every pair: `prob` = (p_ab + 1 - p_ba) / 2, which cancels position bias"
             if both == pr["rows"] else
             "one order scored: `prob` = p_ab, p_ba is null" if both == 0 else
             f"both orders scored for {both} of {pr['rows']} pairs (p_ba null for the others)")
    rows = info["rows"]
    body = f"""
# PairDistill teacher data, round {it}

The teacher signals of round {it} of a [PairDistill](https://aclanthology.org/2024.emnlp-main.790/) run
(pairwise relevance distillation for dense retrieval, Huang & Chen, EMNLP 2024), exported by
`pairdistill export --iteration {it}` from `{info['sources']['pointwise']}` and `{info['sources']['pairwise']}`.

## How it was made

- **Retriever**: the top-k of each training query come from the round-{it - 1} checkpoint {retriever}.
- **Top-k**: {_setting(info['top_k'], f"retriever ranks up to {pw['top_k']} in the file")};
  {pw['added_positives']} labelled positives the retriever missed were added and scored too.
- **Pointwise teacher**: {_teacher_line(info['pointwise_teacher'])}.
- **Pairwise teacher**: {_teacher_line(info['pairwise_teacher'])}; {order}.
- **Pairs**: drawn per query among passages fewer than delta ranks apart on the pointwise teacher's
  ranking; delta {_setting(info['delta'], f"largest rank gap in the file {pr['max_gap']}")};
  pairs per query {_setting(info['pairs_per_query'], f"{pr['min_per_query']} to {pr['max_per_query']} in the file")}.
- {pw['cached']} of the {pw['rows']} pointwise scores were reused from an earlier round's file of the
  same teacher (same weights and settings).

## Configs

| config | rows | columns |
|---|---|---|
| `train` | {rows['train']} (one per query) | `query_id`, `document_ids` (list), `scores` (list) |
| `queries` | {rows['queries']} | `query_id`, `text` |
| `documents` | {rows['documents']} | `document_id`, `text` |
| `pairs` | {rows['pairs']} (on {pr['queries']} queries) | `query_id`, `document_id_a`, `document_id_b`, `prob`, `p_ab`, `p_ba` |

- `train`: every passage the pointwise teacher scored for the query ({pw['min_list']} to {pw['max_list']}
  a query), best first (the teacher's rank), with its raw score (a logit: PyLate's `Distillation`
  loss takes a softmax of them). This is PyLate's knowledge-distillation layout.
- `documents`: each passage's title and text joined by one space, as every model of the run saw it.
- `pairs`: the pairwise teacher's preference of each sampled pair: `p_ab` = P(a > b | q) with a first,
  `p_ba` = P(b > a | q) with b first (null when one order was scored), `prob` the training target for
  P(a > b | q). No other tool has a format for pairwise preferences: this one is PairDistill's.

## Training with PyLate

```python
from datasets import load_dataset
from pylate import losses, models, utils

path = "path/to/this/directory"
train = load_dataset(path, "train", split="train")
queries = load_dataset(path, "queries", split="train")
documents = load_dataset(path, "documents", split="train")
# PyLate's collator stacks the scores of a batch: keep n_ways at most the shortest list ({pw['min_list']})
train.set_transform(utils.KDProcessing(queries=queries, documents=documents, n_ways={min(32, pw['min_list'])}).transform)
model = models.ColBERT("your-base-model")
loss = losses.Distillation(model=model)
```
"""
    return "\n".join(header) + "\n" + body
