# The round's teacher data as a Hugging Face dataset directory PyLate trains from (pairdistill.export):
#   snakemake --cores 2 export                        # results/export/iter-{iteration}/ (not in `all`)
#   snakemake --cores 2 results/export/iter-1         # any round that has run


rule export_round:
    """Round {it}'s pointwise and pairwise teacher scores, queries and passages as the configs train,
    queries, documents and pairs, with a README.md dataset card (pairdistill.export)."""
    input:
        pointwise="results/iter-{it}/pointwise.parquet",
        pairwise="results/iter-{it}/pairwise.parquet",
        corpus=CORPUS,
        queries=QUERIES,
        retriever=lambda w: ckpt(int(w.it) - 1),
    output:
        directory("results/export/iter-{it}"),
    wildcard_constraints:
        it=r"[1-9]\d*",
    params:
        split=config["train_split"],
        top_k=config["retrieve"]["top_k"],
        delta=config["pairs"]["delta"],
        per_query=config["pairs"]["per_query"],
    log:
        "logs/export/iter-{it}.log",
    benchmark:
        "benchmarks/export/iter-{it}.tsv"
    threads: 1
    resources:
        **resources_of("export"),
    shell:
        PD + " export --iteration {wildcards.it} --pointwise {input.pointwise:q} --pairwise {input.pairwise:q}"
        " --corpus {input.corpus:q} --queries {input.queries:q} --retriever {input.retriever:q}"
        " --split {params.split:q} --top-k {params.top_k} --delta {params.delta}"
        " --pairs-per-query {params.per_query} --out {output:q} > {log} 2>&1"


def export_target(wildcards):
    if ITERATION < 1:
        raise WorkflowError("export: iteration 0 has no teacher data (set --config iteration=N, N >= 1)")
    return f"results/export/iter-{ITERATION}"


rule export:
    """The configured round's teacher data (`snakemake export`; a round not run yet runs first)."""
    input:
        export_target,
