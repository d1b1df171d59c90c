"""Ablations (the paper's Tables 3 and 6): variants of the full method's training, and their table.

A variant is declared in config ``ablations.variants`` as a name and the settings it changes,
nested (``{train: {lambda_pair: 0}}``) or dotted (``{train.lambda_pair: 0}``).

- A variant that changes ``train`` settings only trains on the full method's teacher scores of
  each round, so only training, indexing and evaluation run again for it.
- A variant that changes a setting upstream of training (:data:`UPSTREAM`: the student, the
  index, retrieval, the teachers, pair sampling, the seed, the training split) needs its own
  top-k, teacher scores and pairs. It runs the whole method again with its settings (its
  complete config is :func:`upstream_configs`), under the same ``results/ablations/<name>/``
  (rules/ablations.smk includes the workflow once more as a Snakemake module with that config),
  which is everything that setting feeds and some more: its own prepared data, fitted teachers
  and iteration 0, identical to the full method's where the setting does not reach them.
- The data, the evaluation splits and measures, the rounds, ``ablations`` itself and settings of
  how jobs run (threads, shards, resources) are shared by every variant and cannot vary.

An unknown key, a shared one, or a name that collides with another (or with ``full``, the name of
the full method in the table) is refused at start-up with one line naming it.

The table compares each variant with the full method at the same iteration, per evaluation split
and measure: the mean over the judged queries, its difference to the full method, and the p-value
of a paired t-test over the queries (``scipy.stats.ttest_rel``).
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import yaml

from . import evaluate, io

FULL = "full"  # the full method's name in the table; no variant may take it
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
TRAINED = "train"  # a variant that changes only this section reuses the full method's teacher scores
# settings upstream of training that a variant may change: it then runs the whole method again
UPSTREAM = ("student", "index", "retrieve", "teachers", "pairs", "seed", "train_split")


@lru_cache(maxsize=1)
def _schema() -> dict:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml where built: 10x the pure-Python parser
    return yaml.load(Path(__file__).with_name("config.schema.yaml").read_text(), Loader=loader)


def _train_schema() -> dict:
    return {**_schema()["properties"]["train"], "definitions": _schema()["definitions"]}


@lru_cache(maxsize=2)
def _validator(train_only: bool):
    """A validator of the config schema, or of its ``train`` section only, its schema
    checked once: ``jsonschema.validate`` checks the schema against its meta-schema at every call,
    which was most of a dry run's time in this module (every variant, every Snakemake start)."""
    import jsonschema

    schema = _train_schema() if train_only else _schema()
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _check(instance: dict, train_only: bool) -> None:
    """Raise the schema's best-matching ``jsonschema.ValidationError``, as ``jsonschema.validate``."""
    import jsonschema

    error = jsonschema.exceptions.best_match(_validator(train_only).iter_errors(instance))
    if error is not None:
        raise error


def normalise(name: str) -> str:
    """Names that differ only in case or in ``_`` against ``-`` are one name (they would also be
    one directory on a case-insensitive file system)."""
    return name.lower().replace("_", "-")


def _flatten(spec: dict, prefix: str) -> Iterable[tuple[str, object]]:
    for key, value in spec.items():
        path = f"{prefix}.{key}"
        if isinstance(value, dict):
            if not value:
                raise ValueError(f"{path}: sets nothing")
            yield from _flatten(value, path)
        else:
            yield path, value


def _overrides(name: str, spec, config: dict) -> dict[str, object]:
    """A variant's changes as {dotted key: value} (``train.lambda_pair``, ``pairs.delta``); a key
    that is unknown or shared by every variant is an error naming it."""
    where = f"ablations.variants.{name}"
    if not isinstance(spec, dict) or not spec:
        raise ValueError(f"{where}: a variant sets at least one setting, e.g. {{train: {{lambda_pair: 0}}}}")
    changes: dict[str, object] = {}
    for dotted, value in _flatten(spec, where):
        key = dotted[len(where) + 1:]
        section = key.partition(".")[0]
        if not _known(config, key):
            raise ValueError(f"{dotted}: unknown key (a variant sets train.* settings: {', '.join(config[TRAINED])}; "
                             f"or settings upstream of training: {', '.join(UPSTREAM)})")
        if section != TRAINED and section not in UPSTREAM:
            raise ValueError(f"{dotted}: cannot vary in an ablation (the data, the evaluation, the rounds and "
                             "how jobs run are shared by every variant; train.* and "
                             f"{', '.join(UPSTREAM)} can vary)")
        current = _lookup(config, key)
        if isinstance(current, dict):
            raise ValueError(f"{dotted}: is a section; set the keys inside it")
        if key == "seed" and config.get("query_splits"):
            raise ValueError(f"{dotted}: cannot vary while query_splits is set (the derived splits are cut by "
                             "the seed, so the variant would be evaluated on other queries)")
        if key in changes:
            raise ValueError(f"{dotted}: set twice (nested and dotted)")
        # Snakemake's --config reads nested values as text: parse them unless the setting is text
        if isinstance(value, str) and not isinstance(current, str):
            value = yaml.safe_load(value)
        changes[key] = value
    return changes


def _lookup(config: dict, key: str):
    node = config
    for part in key.split("."):
        node = node[part]
    return node


def _known(config: dict, key: str) -> bool:
    try:
        _lookup(config, key)
    except (KeyError, TypeError):  # a missing key, or a key below a setting that is not a section
        return False
    return True


def _declared(config: dict) -> dict[str, dict[str, object]]:
    """Every declared variant's changes ({dotted key: value}), in declaration order, names checked."""
    declared = (config.get("ablations") or {}).get("variants") or {}
    seen = {FULL: FULL}
    out = {}
    for name, spec in declared.items():
        name = str(name)
        if not NAME.fullmatch(name):
            raise ValueError(f"ablations.variants.{name}: a variant name is letters, digits, '.', '_' "
                             "and '-', starting with a letter or digit")
        other = seen.setdefault(normalise(name), name)
        if other == FULL:
            raise ValueError(f"ablations.variants.{name}: name collides with {FULL!r}, the full method's "
                             "name in the table (the full method needs no variant)")
        if other != name:
            raise ValueError(f"ablations.variants.{name}: name collides with variant {other!r} "
                             "(names are compared ignoring case and '_' against '-')")
        out[name] = _overrides(name, spec, config)
    return out


def variants(config: dict) -> dict[str, dict]:
    """Every declared variant's complete train settings (the full method's, with its changes),
    in declaration order. Raises ValueError with one line naming the offending key."""
    import jsonschema

    out = {}
    for name, changes in _declared(config).items():
        settings = {**config[TRAINED], **{k.partition(".")[2]: v for k, v in changes.items()
                                           if k.partition(".")[0] == TRAINED}}
        try:
            _check(settings, train_only=True)
        except jsonschema.ValidationError as exc:
            key = ".".join(map(str, exc.absolute_path))
            raise ValueError(f"ablations.variants.{name}.train.{key}: {exc.message}") from None
        out[name] = settings
    return out


def _upstream(config: dict) -> dict[str, dict[str, object]]:
    """The declared variants that change a setting upstream of training, with their changes."""
    return {name: changes for name, changes in _declared(config).items()
            if not all(k.partition(".")[0] == TRAINED for k in changes)}


def upstream_configs(config: dict) -> dict[str, dict]:
    """The variants that change a setting upstream of training, each with its complete config:
    the full method's with the variant's changes, and no ablations of its own. Raises ValueError
    with one line naming the key whose value the config schema refuses."""
    import copy

    import jsonschema

    out = {}
    for name, changes in _upstream(config).items():
        merged = copy.deepcopy(config)
        for key, value in changes.items():
            parent, _, last = key.rpartition(".")
            (_lookup(merged, parent) if parent else merged)[last] = value
        merged["ablations"] = {**merged.get("ablations", {}), "variants": {}, "run": None}
        merged["seeds"] = [merged["seed"]]  # one seed: the primary's (or the variant's own seed)
        merged.pop("seed_module", None)
        try:
            _check(merged, train_only=False)
        except jsonschema.ValidationError as exc:
            key = ".".join(map(str, exc.absolute_path))
            raise ValueError(f"ablations.variants.{name}.{key}: {exc.message}") from None
        out[name] = merged
    return out


# The stages before round 1 that an upstream variant may take from the full method's run as they
# are, and the settings each one reads (a key and everything under it). ``teachers``: fitting or
# re-basing both teachers. A fusion-pairwise fit reads pairs.delta (its judged pairs), and a
# cross-encoder or bert-pairwise fit reads the hard negatives that iteration 0 retrieves, hence
# the student, index and retrieve settings (:func:`shared_stages` adds those only when it mines).
SHARED_STAGE_READS = {
    "data": ("train_split", "seed"),
    "teachers": ("teachers", "seed", "train_split", "pairs.delta"),
}
MINING_READS = ("student", "index", "retrieve")


def _mines(config: dict) -> bool:
    """Whether a teacher is fitted on mined negatives (the cross-encoder and bert-pairwise fits)."""
    default = {"pointwise": "cross-encoder", "pairwise": "bert-pairwise"}
    for kind, method in default.items():
        t = config["teachers"][kind]
        if t.get("model") == "fit" and not t.get("rebase") and (t.get("fit") or {}).get("method", method) == method:
            return True
    return False


def shared_stages(config: dict) -> dict[str, list[str]]:
    """Upstream variant -> the stages of :data:`SHARED_STAGE_READS` whose settings it leaves as
    they are: its run links the full method's outputs of those stages instead of computing them
    again (the same inputs, settings and code give the same files)."""
    out = {}
    for name, changes in _upstream(config).items():
        shared = []
        for stage, reads in SHARED_STAGE_READS.items():
            reads = reads + (MINING_READS if stage == "teachers" and _mines(config) else ())
            if not any(k == r or k.startswith(r + ".") for k in changes for r in reads):
                shared.append(stage)
        out[name] = shared
    return out


def requested(config: dict, declared: dict[str, dict]) -> list[str]:
    """The variants to run: ``ablations.run`` (in its order), or every declared one when unset."""
    run = (config.get("ablations") or {}).get("run")
    if run is None:
        return list(declared)
    for name in run:
        if name not in declared:
            raise ValueError(f"ablations.run: {name!r} is not a declared variant "
                             f"(ablations.variants: {', '.join(declared) or 'none'})")
    return list(dict.fromkeys(run))


# train settings that change how a job runs, not what it writes: passed as resources (no rerun)
SPEED = ("save_every", "micro_batch", "grad_checkpointing")


def train_flags(settings: dict) -> str:
    """The ``train`` stage's flags for a complete set of train settings (the :data:`SPEED` ones
    aside: how often a state is saved and how a step is split, passed as resources)."""
    import shlex

    return " ".join(f"--{k.replace('_', '-')} {shlex.quote(str(v))}" for k, v in settings.items() if k not in SPEED)


# --------------------------------------------------------------------------------------------

def paired_p_value(values: np.ndarray, full: np.ndarray) -> float:
    """Two-sided paired t-test over queries; NaN where the two agree on every query (no test)."""
    from scipy import stats

    if len(values) < 2 or np.array_equal(values, full):
        return float("nan")
    return float(stats.ttest_rel(values, full).pvalue)


# With fewer seeds than this, the across-seed sd of a difference (and its test) is not estimated.
MIN_SEEDS = 3
TEST = ("p_value: paired t-test over queries of the seed-averaged per-query scores; "
        "p_seeds: one-sample t-test over seeds of the per-seed differences (3 seeds or more)")


def _row(variant: str, iteration: int, eval_set: str, measure: str, values: dict, full: dict) -> dict:
    """One table row: a system's per-query values under each seed against the full method's on the
    same queries and seeds. ``value`` and ``delta`` are means over the seeds both have; ``delta_sd``
    the sd over seeds of the per-seed differences of means (from 3 seeds); ``p_value`` the paired
    t-test over queries of the seed-averaged per-query scores; ``p_seeds`` the one-sample t-test of
    the per-seed differences (from 3 seeds), the test that accounts for training variance."""
    from scipy import stats

    seeds = sorted(s for s in values if s in full)
    n = len(values[seeds[0]]) if seeds else 0
    if not seeds or n == 0:
        return {"variant": variant, "iteration": iteration, "eval_set": eval_set, "measure": measure,
                "value": float("nan"), "delta": float("nan"), "p_value": float("nan"), "n_queries": n,
                "n_seeds": len(seeds), "delta_sd": float("nan"), "p_seeds": float("nan"), "spread": "no seeds"}
    mine = np.mean([values[s] for s in seeds], axis=0)
    theirs = np.mean([full[s] for s in seeds], axis=0)
    diffs = np.array([np.mean(values[s]) - np.mean(full[s]) for s in seeds])
    estimated = len(seeds) >= MIN_SEEDS
    same = variant == FULL
    p_seeds = float("nan")
    if estimated and not same and np.ptp(diffs) > 0:
        p_seeds = float(stats.ttest_1samp(diffs, 0.0).pvalue)
    return {"variant": variant, "iteration": iteration, "eval_set": eval_set, "measure": measure,
            "value": float(np.mean(mine)), "delta": float(np.mean(diffs)),
            "p_value": float("nan") if same else paired_p_value(mine, theirs), "n_queries": n,
            "n_seeds": len(seeds), "delta_sd": float(np.std(diffs, ddof=1)) if estimated else float("nan"),
            "p_seeds": p_seeds,
            "spread": "" if estimated else f"not estimated ({len(seeds)} seed{'s' if len(seeds) != 1 else ''} < {MIN_SEEDS})"}


def table(runs: Sequence[tuple], qrels: pd.DataFrame, measures: dict[str, Sequence[str]], eval_sets: dict[str, str],
          references: Sequence[tuple] = ()) -> pd.DataFrame:
    """One row per (variant, iteration, evaluation split, measure), over the seeds.

    ``runs`` holds (seed, variant, iteration, split, run) with ``variant`` ``full`` for the full
    method, which every other variant is compared with at the same seed, iteration and split (a
    4-tuple without the seed is one seed, 0): ``delta`` is the mean over seeds of the difference of
    the means, ``p_value`` the paired t-test over the split's judged queries of the seed-averaged
    per-query scores (a query missing from a run counts as 0, as in the metrics), ``delta_sd`` and
    ``p_seeds`` the across-seed sd of the difference and its t-test (see :func:`_row`). ``qrels``
    carries a ``split`` column; ``measures`` and ``eval_sets`` are per split. ``references``
    (seed, name, split, run) are other systems (iteration 0, BM25, a teacher) compared the same way
    with the full method's last iteration under the same seed, whose number their rows carry."""
    runs = [r if len(r) == 5 else (0, *r) for r in runs]
    references = [r if len(r) == 4 else (0, *r) for r in references]
    per_query = {}  # (variant, iteration, split) -> seed -> [values per measure]
    for seed, variant, iteration, split, run in runs:
        judged = qrels[qrels["split"] == split]
        per_query.setdefault((variant, iteration, split), {})[seed] = evaluate.per_query(run, judged, measures[split])[1]
    rows = []

    def by_measure(got: dict, i: int) -> dict:
        return {s: v[i] for s, v in got.items()}

    for variant, iteration, split in dict.fromkeys((v, n, sp) for _, v, n, sp, _ in runs):
        key = (FULL, iteration, split)
        if key not in per_query:
            raise ValueError(f"no run of the full method at iteration {iteration} on split {split!r}")
        missing = sorted(set(per_query[variant, iteration, split]) - set(per_query[key]))
        if missing:
            raise ValueError(f"no run of the full method at iteration {iteration} on split {split!r} "
                             f"under seed {missing[0]}")
        for i, measure in enumerate(measures[split]):
            rows.append(_row(variant, iteration, eval_sets[split], measure,
                             by_measure(per_query[variant, iteration, split], i), by_measure(per_query[key], i)))
    last = max((n for _, v, n, _, _ in runs if v == FULL), default=None)
    refs = {}
    for seed, name, split, run in references:
        if (FULL, last, split) not in per_query:
            raise ValueError(f"no run of the full method on split {split!r} to compare {name!r} with")
        judged = qrels[qrels["split"] == split]
        refs.setdefault((name, split), {})[seed] = evaluate.per_query(run, judged, measures[split])[1]
    for (name, split), got in refs.items():
        for i, measure in enumerate(measures[split]):
            rows.append(_row(name, last, eval_sets[split], measure, by_measure(got, i),
                             by_measure(per_query[FULL, last, split], i)))
    frame = pd.DataFrame(rows, columns=io.SCHEMAS["ablations"].names)
    order = {v: i for i, v in enumerate(dict.fromkeys([FULL, *(r[1] for r in runs), *(r[1] for r in references)]))}
    frame = frame.sort_values(["iteration", "eval_set"], kind="stable")
    frame = frame.sort_values("variant", key=lambda s: s.map(order), kind="stable")
    return io.to_table(frame.astype({"iteration": "int32", "n_queries": "int32", "n_seeds": "int32"}),
                       "ablations").to_pandas()


def ablation_table(run: list[tuple[str, str, str, str, str]] = (), *, qrels_path: str, measures: list[Sequence[str]],
                   dataset: str, out: str, out_tsv: str | None = None,
                   reference: list[tuple[str, str, str, str]] = ()) -> pd.DataFrame:
    """Each ablation variant against the full method over the seeds: delta, its sd, two tests.

    Args:
        run: an evaluation run (run.parquet) of a variant ('full': the full method) under a seed, as
            SEED VARIANT ITERATION SPLIT RUN; repeated
        measures: a split and its measures (SPLIT MEASURE...); repeated for each split
        reference: another system's run under a seed, compared with the full method's last iteration
            under that seed, as SEED NAME SPLIT RUN; repeated
        dataset: names the evaluation sets: <dataset>/<split>
    """
    return write(run, qrels_path, {m[0]: m[1:] for m in measures}, dataset, out, out_tsv, references=reference)


def write(runs: Sequence[tuple[str, str, str, str, str]], qrels_path: str, measures: dict[str, Sequence[str]],
          dataset: str, out: str, out_tsv: str | None = None,
          references: Sequence[tuple[str, str, str, str]] = ()) -> pd.DataFrame:
    """The ``ablation-table`` stage: read each (seed, variant, iteration, split, run file) and each
    reference (seed, name, split, run file), write the table as Parquet (and TSV), and print it."""
    loaded = [(int(seed), v, int(n), s, io.read_table(p, "run")) for seed, v, n, s, p in runs]
    refs = [(int(seed), name, s, io.read_table(p, "run")) for seed, name, s, p in references]
    splits = sorted({r[3] for r in loaded})
    result = table(loaded, io.read_table(qrels_path, "qrels"), measures, {s: f"{dataset}/{s}" for s in splits},
                   refs)
    io.write_table(result, "ablations", out)
    if out_tsv:
        def p(v):
            return "" if np.isnan(v) else f"{v:.3g}"

        text = result.assign(value=result["value"].map("{:.4f}".format),
                             delta=result["delta"].map("{:+.4f}".format),
                             delta_sd=result["delta_sd"].map(lambda v: "" if np.isnan(v) else f"{v:.4f}"),
                             p_value=result["p_value"].map(p), p_seeds=result["p_seeds"].map(p),
                             test=TEST)
        with io.atomic_path(out_tsv) as tmp:
            text.to_csv(tmp, sep="\t", index=False)
    print(result.to_string(index=False, float_format=lambda v: f"{v:.4f}"), flush=True)
    print(TEST, flush=True)
    return result
