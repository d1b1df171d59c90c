"""Derived query splits: a collection's split partitioned into named parts (config ``query_splits``).

A collection with one judged split (Cranfield's ``test``) can still give a training split and an
evaluation split without sharing a query::

    query_splits:
      adapt: {from: test, share: 0.5}          # a seeded half of test's queries
      heldout: {from: test, rest_of: [adapt]}  # the queries of test not in adapt

Each derived split takes its queries from one split of the collection (``from``): either a
``share`` of them (the number rounded to the nearest query) or the ones left by other derived
splits of the same source (``rest_of``). The queries of a source are shuffled once, seeded by the
run's ``seed`` and the source's name; the ``share`` splits take consecutive blocks of that order,
in the order of their names, so they never overlap. A derived split's qrels are its queries' rows
of the source's qrels. ``train_split`` and ``eval_split`` may then name derived splits, and the
``prepare`` stage writes them as any other split (the ``split`` column of queries and qrels).

Every bad setting is a :class:`~pairdistill.errors.SettingError` naming its key.
"""

from __future__ import annotations

import zlib
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from .errors import SettingError

KEY = "query_splits"


def check(spec: Mapping | None, collection_splits: Iterable[str] = ()) -> dict[str, dict]:
    """The derived splits, checked and normalised to ``{name: {"from": s, "share": x}}`` or
    ``{name: {"from": s, "rest_of": [names]}}``. ``collection_splits``: the collection's own split
    names where known (a derived split may not take one of them)."""
    spec = dict(spec or {})
    own = set(collection_splits)
    out: dict[str, dict] = {}
    for name, entry in spec.items():
        key = f"{KEY}.{name}"
        if not isinstance(entry, Mapping):
            raise SettingError(f"{key}: expected {{from: <split>, share: <0..1>}} or {{from: <split>, rest_of: "
                               f"[<derived split>, ...]}}, got {entry!r}")
        unknown = sorted(set(entry) - {"from", "share", "rest_of"})
        if unknown:
            raise SettingError(f"{key}.{unknown[0]}: unknown key (a derived split takes from, and share or rest_of)")
        source = entry.get("from")
        if not isinstance(source, str) or not source:
            raise SettingError(f"{key}.from: the split whose queries it takes is missing")
        if ("share" in entry) == ("rest_of" in entry):
            raise SettingError(f"{key}: give exactly one of share (a part of {source}'s queries) and rest_of "
                               f"(what other derived splits of {source} leave)")
        if name in own:
            raise SettingError(f"{key}: the collection has a split of that name; name the derived split otherwise")
        if "share" in entry:
            share = entry["share"]
            if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1:
                raise SettingError(f"{key}.share: {share!r} is not a share of the queries (0 < share <= 1)")
            out[name] = {"from": source, "share": float(share)}
        else:
            rest = entry["rest_of"]
            rest = [rest] if isinstance(rest, str) else rest
            if not isinstance(rest, list) or not rest or not all(isinstance(r, str) for r in rest):
                raise SettingError(f"{key}.rest_of: expected a derived split's name or a list of them, got {rest!r}")
            out[name] = {"from": source, "rest_of": list(dict.fromkeys(rest))}
    for name, entry in out.items():
        key = f"{KEY}.{name}"
        if entry["from"] in out:
            raise SettingError(f"{key}.from: {entry['from']!r} is a derived split itself; derive from a split "
                               "of the collection")
        for other in entry.get("rest_of", ()):
            if other not in out:
                raise SettingError(f"{key}.rest_of: {other!r} is not a derived split ({', '.join(sorted(out))})")
            if other == name:
                raise SettingError(f"{key}.rest_of: a split cannot be the rest of itself")
            if "share" not in out[other]:
                raise SettingError(f"{key}.rest_of: {other!r} is itself a rest_of split; name the share splits")
            if out[other]["from"] != entry["from"]:
                raise SettingError(f"{key}.rest_of: {other!r} takes its queries from {out[other]['from']!r}, "
                                   f"not from {entry['from']!r}")
    for source in sorted({e["from"] for e in out.values()}):
        total = sum(e["share"] for e in out.values() if e["from"] == source and "share" in e)
        if total > 1 + 1e-9:
            names = ", ".join(n for n, e in out.items() if e["from"] == source and "share" in e)
            raise SettingError(f"{KEY}: the shares of {source!r} ({names}) add up to {total:g}, more than all its queries")
    return out


def loaded_splits(requested: Sequence[str], spec: Mapping[str, dict]) -> list[str]:
    """The collection's splits to read for ``requested`` (derived ones replaced by their source),
    in first-requested order."""
    out: list[str] = []
    for split in requested:
        source = spec[split]["from"] if split in spec else split
        if source not in out:
            out.append(source)
    return out


def _order(query_ids: Sequence[str], source: str, seed: int) -> list[str]:
    """The source's query ids (sorted, then shuffled by ``seed`` and the source's name)."""
    ids = sorted(set(query_ids))
    rng = np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(source.encode("utf-8"))]))
    return [ids[i] for i in rng.permutation(len(ids))]


def partition(query_ids: Sequence[str], source: str, spec: Mapping[str, dict], seed: int) -> dict[str, list[str]]:
    """The sorted query ids of each derived split of ``source``. The ``share`` splits (by name)
    take consecutive blocks of the seeded order, the block ends at round(cumulative share x n);
    a ``rest_of`` split takes the source's queries in none of its named splits. A derived split
    left without a query is a SettingError."""
    order = _order(query_ids, source, seed)
    n = len(order)
    parts: dict[str, list[str]] = {}
    done, start = 0.0, 0
    for name in sorted(s for s, e in spec.items() if e["from"] == source and "share" in e):
        done += spec[name]["share"]
        end = min(n, int(np.floor(done * n + 0.5)))
        parts[name] = sorted(order[start:end])
        start = end
    for name in sorted(s for s, e in spec.items() if e["from"] == source and "rest_of" in e):
        taken = {q for other in spec[name]["rest_of"] for q in parts[other]}
        parts[name] = sorted(q for q in order if q not in taken)
    for name, ids in parts.items():
        if not ids:
            what = (f"a share of {spec[name]['share']:g}" if "share" in spec[name]
                    else f"the rest of {', '.join(spec[name]['rest_of'])}")
            raise SettingError(f"{KEY}.{name}: {what} of the {n} queries of {source!r} is no query")
    return parts


def derive(queries: pd.DataFrame, qrels: pd.DataFrame, requested: Sequence[str], spec: Mapping[str, dict],
           seed: int) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """The queries and qrels of the ``requested`` splits (split, query_id, ...), derived ones cut
    from their sources' rows; a source that is not requested itself is left out. Splits come in
    the order requested, then by query id. Returns them and per derived split its source, queries
    and judgements."""
    q_frames, r_frames, stats = [], [], {}
    parts_of: dict[str, dict[str, list[str]]] = {}
    for split in requested:
        if split not in spec:
            q_frames.append(queries[queries["split"] == split])
            r_frames.append(qrels[qrels["split"] == split])
            continue
        source = spec[split]["from"]
        src_queries = queries[queries["split"] == source]
        if src_queries.empty:
            raise SettingError(f"{KEY}.{split}.from: the collection's split {source!r} has no queries")
        if source not in parts_of:
            parts_of[source] = partition(src_queries["query_id"].tolist(), source, spec, seed)
        ids = set(parts_of[source][split])
        mine = src_queries[src_queries["query_id"].isin(ids)].assign(split=split)
        judged = qrels[(qrels["split"] == source) & qrels["query_id"].isin(ids)].assign(split=split)
        q_frames.append(mine.sort_values("query_id", kind="stable"))
        r_frames.append(judged)
        stats[split] = {"from": source, "queries": len(mine), "qrels": len(judged),
                        "judged_queries": int(judged["query_id"].nunique())}
    out_q = pd.concat(q_frames, ignore_index=True)[list(queries.columns)]
    out_r = pd.concat(r_frames, ignore_index=True)[list(qrels.columns)]
    return out_q, out_r, stats
