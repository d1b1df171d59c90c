"""Seeds: every student-side job once per seed, and each number with its spread over seeds.

Config ``seeds`` lists the seeds to run (null, the default: ``[seed]``); its first element must be
``seed``, the *primary* seed: its files are the ones a one-seed run writes (``results/iter-N/...``), and the data and the
fitted teachers are prepared and fitted once, under it, for every seed (fixed inputs, like the
paper's released rerankers). Every other seed ``s`` runs the student side again (the initial
checkpoint's sampled passages, k-means, the sampled training queries, pair sampling, training
order, evaluation) as a Snakemake module of the same Snakefile whose files are under
``results/seeds/<s>/`` (rules/seeds.smk). Its teacher scoring reuses what the same teacher already
scored for the same (query, passage) under the primary seed (the teacher-score cache, hit rate in
``results/seeds/<s>/teacher_cache.tsv`` and, for every seed, ``results/seeds_teacher_cache.tsv``).

This module has no Snakemake and no torch in it: the workflow imports it at start-up.
"""

from __future__ import annotations

import copy
import re
from typing import Sequence

import numpy as np
import pandas as pd

from . import io

# config key of a seed module's own config: the earlier seeds' results prefixes its teacher
# scoring reads as a cache ("results/" for the primary, "results/seeds/<s>/" for the others)
MODULE_KEY = "seed_module"


def check(config: dict) -> list[int]:
    """The seeds to run, the primary first. Raises ValueError with one line naming ``seeds``."""
    seeds = config.get("seeds")
    if seeds is None:
        return [int(config["seed"])]
    if not isinstance(seeds, list):
        raise ValueError(f"seeds: {seeds!r} is not a list of integers (e.g. seeds: [13, 14, 15])")
    if not seeds:
        raise ValueError("seeds: the list is empty (give at least one seed, e.g. seeds: [13])")
    # Snakemake's --config seeds='[13,14]' gives the elements as text: integers written out count
    seeds = [int(s) if isinstance(s, str) and re.fullmatch(r"[+-]?\d+", s.strip()) else s for s in seeds]
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int):
            raise ValueError(f"seeds: {s!r} is not an integer (seeds: {seeds})")
    dup = sorted({s for s in seeds if seeds.count(s) > 1})
    if dup:
        raise ValueError(f"seeds: {', '.join(map(str, dup))} appears more than once (seeds: {seeds})")
    if "seed" in config and config["seed"] is not None and int(config["seed"]) != seeds[0]:
        raise ValueError(f"seeds: the first seed is the primary one (its run is results/), and it is {seeds[0]} "
                         f"while seed is {config['seed']}: start the list with {config['seed']}, or set seed too")
    return list(seeds)


def prefix(seed: int, primary: int) -> str:
    """Where a seed's files live: ``results/`` for the primary, ``results/seeds/<s>/`` otherwise."""
    return "results/" if seed == primary else f"results/seeds/{seed}/"


def module_configs(config: dict, seeds: Sequence[int], train_only_ablations: Sequence[str]) -> dict[int, dict]:
    """The complete config of each non-primary seed's module: the run's own with that seed, one seed
    only (a module runs no seeds of its own), the ablation variants that only train (an upstream
    variant runs under the primary seed only: a module within a module is not planned), and the
    primary's results as its teacher-score cache. Only the primary's: a cache input that named the
    other seeds would change with the list, and a seed dropped or added would rerun the others."""
    out = {}
    for seed in seeds[1:]:
        c = copy.deepcopy(config)
        c["seed"], c["seeds"] = seed, [seed]
        c["ablations"] = {**(c.get("ablations") or {}), "run": list(train_only_ablations)}
        c[MODULE_KEY] = {"cache": [prefix(seeds[0], seeds[0])]}
        out[seed] = c
    return out


# --------------------------------------------------------------------------------------------

def spread(values: Sequence[float]) -> float:
    """The sample sd (n - 1) of a number over seeds; NaN with fewer than two."""
    v = np.asarray(values, dtype=float)
    return float(np.std(v, ddof=1)) if len(v) >= 2 else float("nan")


def table(by_seed: Sequence[tuple[int, pd.DataFrame]], shared: Sequence[pd.DataFrame] = ()) -> pd.DataFrame:
    """One row per (system, iteration, evaluation set, measure): mean, sd and the values over seeds.

    ``by_seed`` holds (seed, metrics frame) for every metrics file of every seed; ``shared`` are the
    metrics of systems no seed changes (BM25 and the bi-encoder over the shared teachers' files):
    their one value counts for every seed, sd 0, ``depends_on_seed`` false."""
    seeds = sorted({s for s, _ in by_seed})
    rows = []
    keys = ["system", "iteration", "eval_set", "measure"]
    long = pd.concat([m.assign(seed=s) for s, m in by_seed], ignore_index=True) if by_seed else \
        pd.DataFrame(columns=[*keys, "value", "seed"])
    long["iteration"] = long["iteration"].astype("Int64")
    for key, g in long.groupby(keys, sort=False, dropna=False):
        g = g.sort_values("seed")
        if g["seed"].duplicated().any():
            raise ValueError(f"seed {int(g['seed'][g['seed'].duplicated()].iloc[0])} has two values of {key}")
        values = g["value"].astype(float).tolist()
        rows.append({**dict(zip(keys, key)), "mean": float(np.mean(values)), "sd": spread(values),
                     "n_seeds": len(values), "seeds": [int(s) for s in g["seed"]], "values": values,
                     "depends_on_seed": True})
    for m in shared:
        for _, r in m.iterrows():
            rows.append({**{k: r[k] for k in keys}, "mean": float(r["value"]), "sd": 0.0, "n_seeds": len(seeds),
                         "seeds": seeds, "values": [float(r["value"])] * len(seeds), "depends_on_seed": False})
    frame = pd.DataFrame(rows, columns=io.SCHEMAS["seeds"].names)
    frame["iteration"] = frame["iteration"].astype("Int64")
    return io.to_table(frame, "seeds").to_pandas()


def mean_sd(mean: float, sd: float, n: int) -> str:
    """``0.6608 ± 0.0071`` (several seeds), ``0.6608`` (one)."""
    if n < 2 or np.isnan(sd):
        return f"{mean:.4f}"
    return f"{mean:.4f} ± {sd:.4f}"


def wide(frame: pd.DataFrame) -> pd.DataFrame:
    """Systems as rows and measures as columns, each cell ``mean ± sd`` (the printed summary)."""
    cells = frame.assign(cell=[mean_sd(m, s, n) + ("" if dep else " (shared)")
                               for m, s, n, dep in zip(frame["mean"], frame["sd"], frame["n_seeds"],
                                                       frame["depends_on_seed"])])
    cells["iteration"] = cells["iteration"].astype("Int64").astype(str).replace("<NA>", "")
    out = cells.pivot_table(index=["system", "iteration", "eval_set"], columns="measure", values="cell",
                            aggfunc="first", sort=False)
    out.columns.name = None
    return out.reset_index()


def seed_table(metrics: list[tuple[str, str]] = (), *, shared: list[str] = (), out: str,
               out_tsv: str | None = None, cache: list[tuple[str, str]] = (),
               cache_out: str | None = None) -> pd.DataFrame:
    """Every system's numbers over the seeds: mean, sd, n_seeds and the values.

    Args:
        metrics: a seed's metrics file, as SEED FILE; repeated for every file of every seed
        shared: a metrics file of systems that no seed changes (sd 0); repeated
        cache: a seed's teacher-score cache report (teacher_cache.tsv), as SEED FILE; repeated
        cache_out: the cache reports of all seeds in one TSV (seed, iteration, teacher, rows, reused,
            hit_rate), the last rows the hit rate of each seed over its rounds
    """
    by_seed = [(int(s), io.read_table(p, "metrics")) for s, p in metrics]
    result = table(by_seed, [io.read_table(p, "metrics") for p in shared])
    io.write_table(result, "seeds", out)
    if out_tsv:
        text = result.assign(
            iteration=result["iteration"].astype("Int64").astype(str).replace("<NA>", ""),
            mean=result["mean"].map("{:.4f}".format),
            sd=result["sd"].map(lambda v: "" if np.isnan(v) else f"{v:.4f}"),
            seeds=result["seeds"].map(lambda v: ",".join(map(str, v))),
            values=result["values"].map(lambda v: ",".join(f"{x:.4f}" for x in v)),
            note=np.where(result["depends_on_seed"], np.where(result["n_seeds"] < 2, "one seed: no spread", ""),
                          "shared by every seed: sd 0"))
        with io.atomic_path(out_tsv) as tmp:
            text.drop(columns=["depends_on_seed"]).to_csv(tmp, sep="\t", index=False)
    if cache_out:
        reports = []
        for s, p in cache:
            frame = pd.read_csv(p, sep="\t")
            if len(frame):
                reports.append(frame.assign(seed=int(s)))
        merged = pd.concat(reports, ignore_index=True) if reports else \
            pd.DataFrame(columns=["seed", "iteration", "teacher", "rows", "reused", "hit_rate"])
        merged = merged[["seed", "iteration", "teacher", "rows", "reused", "hit_rate"]]
        with io.atomic_path(cache_out) as tmp:
            merged.to_csv(tmp, sep="\t", index=False, float_format="%.4f")
    print(wide(result).to_string(index=False), flush=True)
    return result
