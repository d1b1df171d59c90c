# Figures for `snakemake --report results/report.html`, drawn by every run (part of `all` once a
# round has trained; a few seconds). The figures read the artifacts of every round; the ablation
# table is drawn when it exists (`snakemake ablations` reruns this rule), and the benchmark files of
# every job that has run.
import shlex


rule figures:
    """Metrics per round, loss curves, teacher scores and disagreement, cache hits, time and memory."""
    input:
        summary="results/summary.parquet",
        cache="results/teacher_cache.tsv",
        losses=[f"results/iter-{n}/train_loss.parquet" for n in range(1, ITERATION + 1)],
        pointwise=[f"results/iter-{n}/pointwise.parquet" for n in range(1, ITERATION + 1)],
        pairwise=[f"results/iter-{n}/pairwise.parquet" for n in range(1, ITERATION + 1)],
        ablations=ablation_table_if_built(),
    output:
        metrics=figure("metrics", "5. Evaluation"),
        loss=figure("loss", "4. Training"),
        teacher_scores=figure("teacher_scores", "3. Teachers", "scores"),
        disagreement=figure("disagreement", "3. Teachers", "scores"),
        teacher_cache=figure("teacher_cache", "3. Teachers", "cache"),
        benchmarks=figure("benchmarks", "6. Time and memory"),
    params:
        benchmarks="benchmarks",
        ablations=lambda w, input: ("--ablations " + shlex.quote(input.ablations[0])) if input.ablations else "",
    log:
        "logs/figures/figures.log",
    threads: 1
    resources:
        **resources_of("summary"),
    shell:
        PD + " figures --summary {input.summary:q} --cache {input.cache:q} --losses {input.losses:q}"
        " --pointwise {input.pointwise:q} --pairwise {input.pairwise:q} {params.ablations}"
        " --benchmarks {params.benchmarks:q} --out-dir results/figures > {log} 2>&1"
