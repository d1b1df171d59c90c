# Figures for `snakemake --report results/report.html`, drawn by every run (part of `all` once a
# round has trained; a few seconds), from the artifacts of every round and the benchmark files of
# every job that has run. The ablation variants get a figure of their own, part of the `ablations`
# target only (`snakemake ablations --report results/report.html`): were the ablation table an
# input of `all`'s figures, any change of a training setting would rerun every variant with `all`.

rule figures:
    """Metrics per round, loss curves, teacher scores and disagreement, cache hits, time and memory."""
    input:
        summary="results/summary.parquet",
        cache="results/teacher_cache.tsv",
        losses=[f"results/iter-{n}/train_loss.parquet" for n in range(1, ITERATION + 1)],
        pointwise=[f"results/iter-{n}/pointwise.parquet" for n in range(1, ITERATION + 1)],
        pairwise=[f"results/iter-{n}/pairwise.parquet" for n in range(1, ITERATION + 1)],
    output:
        metrics=figure("metrics", "3. Evaluation"),
        loss=figure("loss", "2. Training"),
        teacher_scores=figure("teacher_scores", "1. Teachers", "scores"),
        disagreement=figure("disagreement", "1. Teachers", "scores"),
        teacher_cache=figure("teacher_cache", "1. Teachers", "cache"),
        benchmarks=figure("benchmarks", "4. Time and memory"),
    params:
        benchmarks="benchmarks",
    log:
        "logs/figures/figures.log",
    threads: 1
    resources:
        **resources_of("summary"),
    shell:
        PD + " figures --summary {input.summary:q} --cache {input.cache:q} --losses {input.losses:q}"
        " --pointwise {input.pointwise:q} --pairwise {input.pairwise:q}"
        " --benchmarks {params.benchmarks:q} --out-dir \"$(dirname {output.metrics:q})\" > {log} 2>&1"


rule ablation_figure:
    """Every measure per round for the full method and each ablation variant (the `ablations` target)."""
    input:
        summary="results/summary.parquet",
        ablations="results/ablations.parquet",
    output:
        figure("ablations", "5. Ablations"),
    log:
        "logs/figures/ablations.log",
    threads: 1
    resources:
        **resources_of("summary"),
    shell:
        PD + " ablation-figure --summary {input.summary:q} --ablations {input.ablations:q} --out {output:q} > {log} 2>&1"
