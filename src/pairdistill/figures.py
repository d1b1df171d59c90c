"""Figures of a run for ``snakemake --report``: metrics per round, loss curves, teacher scores,
the teachers' disagreement by rank gap, teacher-cache hit rates, and time and memory per stage.

Each function reads artifacts (see docs/artifacts.md) and writes one PNG. matplotlib runs
headless (Agg).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import pandas as pd

from . import io
from .bench.benchmark_files import collect
from .inspection import disagreement_by_gap

FIGURES = ("metrics", "loss", "teacher_scores", "disagreement", "teacher_cache", "benchmarks")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _iteration_of(path: str | Path) -> int:
    return int(next(p for p in Path(path).parts if p.startswith("iter-"))[len("iter-"):])


def _save(fig, out: str | Path) -> None:
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    with io.atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    _plt().close(fig)


def _panels(plt, n: int):
    """A figure of ``n`` panels, three to a row, room for a legend below; spare panels hidden."""
    cols = min(3, max(1, n))
    rows = -(-max(1, n) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.8 * cols, 3.6 * rows + 0.8), squeeze=False,
                             layout="constrained")
    for ax in axes.flat[n:]:
        ax.set_axis_off()
    return fig, axes


def _empty(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} in this run", ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


# A system that reranks a top-N is named "... (top-N of ...)" (stages.rerank_pointwise/_pairwise);
# a recall-type measure at N or deeper is then its first stage's, whatever the reranker does.
_RERANKED_TOP = re.compile(r"\(top-(\d+) of ")
_RECALL_AT = re.compile(r"^(?:R|Recall|Success)@(\d+)$")
# colours of the reference systems: after those of the evaluation sets' lines, the same in every panel
_REF_COLOURS = ("C7", "C3", "C4", "C5", "C6", "C8", "C9", "C2", "C1")


def repeats_first_stage(system: str, measure: str) -> bool:
    """Whether ``system``'s value of ``measure`` only repeats its first stage's: a reranker of a
    top-N, and a recall-type measure (R@k, Recall@k, Success@k) with k >= N."""
    top, at = _RERANKED_TOP.search(system), _RECALL_AT.match(measure)
    return bool(top and at and int(at.group(1)) >= int(top.group(1)))


def _bar_panel(ax, bars: list[tuple[str, float, str]], measure: str) -> None:
    """One horizontal bar per (name, value, colour), the name above it and the value at its end."""
    y = range(len(bars))[::-1]
    top = max([v for _, v, _ in bars] + [1e-9])
    ax.barh(list(y), [v for _, v, _ in bars], color=[c for _, _, c in bars], height=0.45)
    for yi, (name, v, _) in zip(y, bars):
        ax.annotate(name, (0, yi + 0.28), xytext=(2, 0), textcoords="offset points", fontsize=7, va="bottom")
        ax.text(v, yi, f" {v:.3f}", fontsize=7, va="center")
    ax.set_xlim(0, 1.12 if top <= 1 else top * 1.15)
    ax.set_ylim(-0.5, len(bars) - 0.1)
    ax.set_yticks([])
    ax.set_xlabel(measure)


def metrics(summary: str | Path, out: str | Path, ablations: str | Path | None = None) -> None:
    """Every measure per round for the full method and each ablation variant.

    Each measure per round, one panel per measure, a line per evaluation set (and per ablation
    variant when the ablation table exists); the systems that are not rounds as dotted horizontal
    lines, a colour each, named in the legend under the panels; none for a reranker in a recall
    panel its top-N already decides (:func:`repeats_first_stage`). A measure the rounds have at
    one iteration only (PairAcc: the starting retriever's) is a panel of bars, one per system."""
    plt = _plt()
    from matplotlib.lines import Line2D

    s = pd.read_parquet(summary)
    its = s[s["iteration"].notna()].copy()
    refs = s[s["iteration"].isna()]
    measures = [c for c in s.columns if c not in ("system", "iteration", "eval_set") and its[c].notna().any()]
    fig, axes = _panels(plt, len(measures))
    ab = pd.read_parquet(ablations) if ablations else None
    if ab is not None:
        # the table also holds reference systems (one row at the last iteration); the variants are
        # those with a directory of their own under results/ablations/
        variants = {p.name for p in (Path(ablations).parent / "ablations").iterdir() if p.is_dir()}
        ab = ab[ab["variant"].isin(variants)]
    eval_sets = sorted(s["eval_set"].unique())
    colour = {e: f"C{i % 10}" for i, e in enumerate(eval_sets)}
    several = len(eval_sets) > 1
    ref_names = list(dict.fromkeys(refs["system"]))
    ref_colour = {n: _REF_COLOURS[i % len(_REF_COLOURS)] for i, n in enumerate(ref_names)}
    legend = {}
    for ax, m in zip(axes.flat, measures):
        ax.set_title(m)
        at = its[its[m].notna()]
        ref_rows = [r for _, r in refs[refs[m].notna()].iterrows() if not repeats_first_stage(r["system"], m)]
        if at["iteration"].nunique() == 1 and (ab is None or ab.loc[ab["measure"] == m, "iteration"].nunique() <= 1):
            bars = [(f"{r['system']} ({r['eval_set']})" if several else str(r["system"]), float(r[m]),
                     colour[r["eval_set"]]) for _, r in at.sort_values(["eval_set", "iteration"]).iterrows()]
            if ab is not None:
                bars += [(f"{r['variant']} {r['eval_set']}, iteration {r['iteration']}", float(r["value"]), "C1")
                         for _, r in ab[ab["measure"] == m].iterrows()]
            bars += [(f"{r['system']} ({r['eval_set']})" if several else str(r["system"]), float(r[m]),
                      ref_colour[r["system"]]) for r in ref_rows]
            _bar_panel(ax, bars, m)
            continue
        for eval_set, g in its.groupby("eval_set"):
            g = g.sort_values("iteration")
            legend[f"PairDistill {eval_set}"], = ax.plot(g["iteration"], g[m], marker="o", color=colour[eval_set])
        if ab is not None:
            for (variant, eval_set), g in ab[ab["measure"] == m].groupby(["variant", "eval_set"]):
                g = g.sort_values("iteration")
                legend[f"{variant} {eval_set}"], = ax.plot(g["iteration"], g["value"], marker="s", linestyle="--")
        # references of (nearly, at this scale) the same value share the line, their dashes
        # interleaved, so that each shows
        values = [float(v) for v in its[m].dropna()] + [float(r[m]) for r in ref_rows]
        close = 0.01 * ((max(values) - min(values)) or 1.0)
        groups = []
        for r in sorted(ref_rows, key=lambda r: float(r[m])):
            if groups and float(r[m]) - float(groups[-1][-1][m]) <= close:
                groups[-1].append(r)
            else:
                groups.append([r])
        for group in groups:
            for j, r in enumerate(group):
                name = f"{r['system']} ({r['eval_set']})" if several else str(r["system"])
                dashes = (j * 2.0, (2.0, 2.0 * (len(group) - 1))) if len(group) > 1 else (0, (1.5, 1.5))
                ax.axhline(r[m], linestyle=dashes, linewidth=1.8, color=ref_colour[r["system"]])
                legend[name] = Line2D([], [], linestyle=(0, (1.5, 1.5)), linewidth=1.8, color=ref_colour[r["system"]])
        ax.set_xlabel("iteration")
        ax.set_xticks(sorted(its["iteration"].astype(int).unique()))
    if legend:
        fig.legend(legend.values(), legend.keys(), loc="outside lower center", ncol=min(3, len(legend)),
                   fontsize=8, frameon=False)
    _save(fig, out)


def seeds(seeds: str | Path, out: str | Path) -> None:
    """Each measure per round over the seeds: mean and sd, and every seed's value.

    One panel per measure of the rounds: per evaluation set the mean over seeds per iteration with
    an error bar of one sd and each seed's value as a dot; the systems that are not rounds as a
    dotted line at their mean and a band of one sd (none for a system no seed changes: sd 0).

    Args:
        seeds: results/seeds.parquet (pairdistill.seeds.seed_table)
    """
    plt = _plt()
    import numpy as np

    t = pd.read_parquet(seeds)
    its = t[t["iteration"].notna()]
    refs = t[t["iteration"].isna()]
    measures = list(dict.fromkeys(its["measure"]))
    fig, axes = _panels(plt, len(measures))
    n_seeds = int(t["n_seeds"].max()) if len(t) else 0
    legend = {}
    for ax, m in zip(axes.flat, measures):
        ax.set_title(f"{m} over {n_seeds} seeds (mean ± sd)")
        for i, (eval_set, g) in enumerate(its[its["measure"] == m].groupby("eval_set")):
            g = g.sort_values("iteration")
            x = g["iteration"].astype(int).to_numpy()
            legend[f"PairDistill {eval_set}"] = ax.errorbar(x, g["mean"], yerr=g["sd"].fillna(0), marker="o",
                                                            capsize=4, color=f"C{i}")
            for xi, values in zip(x, g["values"]):
                ax.scatter(np.full(len(values), xi) + np.linspace(-0.08, 0.08, len(values)), values, s=10,
                           color=f"C{i}", alpha=0.6, zorder=3)
        for j, (_, r) in enumerate(refs[refs["measure"] == m].iterrows()):
            if repeats_first_stage(r["system"], m):
                continue
            c = _REF_COLOURS[j % len(_REF_COLOURS)]
            ax.axhline(r["mean"], linestyle=(0, (1.5, 1.5)), linewidth=1.6, color=c)
            if r["depends_on_seed"] and not np.isnan(r["sd"]):
                ax.axhspan(r["mean"] - r["sd"], r["mean"] + r["sd"], color=c, alpha=0.12)
            legend[str(r["system"]) + ("" if r["depends_on_seed"] else " (no seed changes it)")] = \
                ax.plot([], [], linestyle=(0, (1.5, 1.5)), color=c)[0]
        ax.set_xlabel("iteration")
        ax.set_xticks(sorted(its["iteration"].astype(int).unique()))
    if not measures:
        _empty(axes.flat[0], "rounds")
    if legend:
        fig.legend(legend.values(), legend.keys(), loc="outside lower center", ncol=min(3, len(legend)),
                   fontsize=8, frameon=False)
    _save(fig, out)


def loss_curves(paths: list[str | Path], out: str | Path) -> None:
    """Total, contrastive, KD and pairwise loss per step, a panel per term, a line per round."""
    plt = _plt()
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    for path in paths:
        df = io.read_table(path, "loss")
        for ax, col in zip(axes, ("loss", "loss_cl", "loss_kd", "loss_pair")):
            ax.plot(df["step"], df[col], label=f"round {_iteration_of(path)}")
    for ax, col in zip(axes, ("loss (total)", "loss_cl", "loss_kd", "loss_pair")):
        ax.set_title(col)
        ax.set_xlabel("step")
    axes[0].legend(fontsize=7)
    _save(fig, out)


def teacher_scores(pointwise: list[str | Path], pairwise: list[str | Path], out: str | Path) -> None:
    """Histograms of the pointwise teacher's scores and of the pairwise target P(a>b), per round."""
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    for path in pointwise:
        a.hist(io.read_table(path, "pointwise")["teacher_score"], bins=50, alpha=0.5,
               label=f"round {_iteration_of(path)}")
    for path in pairwise:
        b.hist(io.read_table(path, "pairwise")["prob"], bins=40, range=(0, 1), alpha=0.5,
               label=f"round {_iteration_of(path)}")
    a.set_title("pointwise teacher score", fontsize=10)
    b.set_title("pairwise teacher P(a>b)\n(a: the passage the pointwise teacher ranks higher)", fontsize=10)
    b.axvline(0.5, color="grey", linestyle=":")
    for ax in (a, b):
        ax.set_ylabel("count")
        if ax.has_data():
            ax.legend(fontsize=7)
    _save(fig, out)


def disagreement(pairwise: list[str | Path], out: str | Path) -> None:
    """The rate of pairs where the pairwise teacher reverses the pointwise order, by rank gap."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for path in pairwise:
        by = disagreement_by_gap(io.read_table(path, "pairwise"))
        ax.plot(by["gap"], by["rate"], marker="o", label=f"round {_iteration_of(path)}")
    ax.set_xlabel("rank gap |rank_a - rank_b| (pointwise teacher ranks)")
    ax.set_ylabel("reversal rate (P(a>b) < 0.5)")
    if ax.has_data():
        ax.legend(fontsize=7)
    else:
        _empty(ax, "pairs")
    _save(fig, out)


def teacher_cache(cache_tsv: str | Path, out: str | Path) -> None:
    """Share of each round's teacher scoring reused from the earlier round, per teacher."""
    plt = _plt()
    df = pd.read_csv(cache_tsv, sep="\t")
    fig, ax = plt.subplots(figsize=(6, 3.6))
    if df.empty:
        _empty(ax, "teacher scores")
    else:
        wide = df.pivot(index="iteration", columns="teacher", values="hit_rate")
        wide.plot.bar(ax=ax, rot=0)
        for bars in ax.containers:  # a value on each bar: a round that reuses nothing shows 0%, not a blank
            ax.bar_label(bars, labels=[f"{b.get_height():.0%}" for b in bars], fontsize=8)
        ax.set_ylim(0, 1.08)
        ax.set_ylabel("hit rate (scores reused)")
    _save(fig, out)


def benchmark_times(directory: str | Path, out: str | Path) -> None:
    """Wall time and peak RSS of every job, summed (time) or maxed (memory) per rule."""
    plt = _plt()
    df = collect(directory) if Path(directory).is_dir() else pd.DataFrame()
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 0.5 + 0.3 * max(4, df["rule"].nunique() if len(df) else 4)))
    if df.empty:
        _empty(a, "benchmark files")
        _empty(b, "benchmark files")
    else:
        by = df.groupby("rule").agg(seconds=("seconds", "sum"), max_rss_mb=("max_rss_mb", "max"))
        by = by.sort_values("seconds")
        a.barh(by.index, by["seconds"])
        a.set_xlabel("wall time, all jobs (s)")
        b.barh(by.index, by["max_rss_mb"].fillna(0))
        for y, rss in enumerate(by["max_rss_mb"]):
            if pd.isna(rss):  # Snakemake writes "-" for a job that ended before its first memory sample
                b.annotate("not measured (the job ended before its first sample)", (0, y), xytext=(3, 0),
                           textcoords="offset points", va="center", fontsize=8, color="0.4")
        b.set_xlabel("peak RSS of a job (MB)")
    _save(fig, out)


def draw_all(summary: str, cache: str, out_dir: str, losses: Sequence[str] = (), pointwise: Sequence[str] = (),
             pairwise: Sequence[str] = (), ablations: str | None = None, benchmarks: str = "benchmarks") -> None:
    """The report's figures (PNG) from a run's artifacts.

    Args:
        losses: one file per round
        pointwise: one file per round
        pairwise: one file per round
        ablations: the ablation table, when it was built
        benchmarks: Snakemake's benchmark files
    """
    out = Path(out_dir)
    metrics(summary, out / "metrics.png", ablations)
    loss_curves(losses, out / "loss.png")
    teacher_scores(pointwise, pairwise, out / "teacher_scores.png")
    disagreement(pairwise, out / "disagreement.png")
    teacher_cache(cache, out / "teacher_cache.png")
    benchmark_times(benchmarks, out / "benchmarks.png")
