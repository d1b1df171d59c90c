# Each retriever on the evaluation split, each teacher as a reranker, and the summary table.


rule evaluate:
    input:
        checkpoint="results/iter-{it}/checkpoint",
        index="results/iter-{it}/index",
        queries=QUERIES,
        qrels=QRELS,
    output:
        run="results/iter-{it}/eval/run.parquet",
        trec="results/iter-{it}/eval/run.trec",
        metrics="results/iter-{it}/eval/metrics.parquet",
    params:
        split=config["eval_split"],
        k=config["evaluate"]["k"],
        measures=config["evaluate"]["measures"],
        search=search_flags("evaluate"),
    log:
        "logs/evaluate/iter-{it}.log",
    benchmark:
        "benchmarks/evaluate/iter-{it}.tsv"
    threads: THREADS
    resources:
        mem_mb=8000,
        runtime=60,
    shell:
        PD + " evaluate --checkpoint {input.checkpoint:q} --index {input.index:q} --queries {input.queries:q}"
        " --qrels {input.qrels:q} --out-dir results/iter-{wildcards.it}/eval --split {params.split}"
        " --k {params.k} --measures {params.measures:q} --iteration {wildcards.it} {params.search}"
        " > {log} 2>&1"


def rerank_source(kind):
    # the pointwise teacher reranks iteration 0's run; the pairwise teacher the pointwise teacher's
    return "results/iter-0/eval/run.parquet" if kind == "pointwise" else "results/teachers/pointwise/rerank/run.parquet"


rule rerank_teacher:
    input:
        run=lambda w: rerank_source(w.kind),
        corpus=CORPUS,
        queries=QUERIES,
        qrels=QRELS,
        teacher=lambda w: teacher_input(w.kind),
    output:
        run="results/teachers/{kind}/rerank/run.parquet",
        trec="results/teachers/{kind}/rerank/run.trec",
        metrics="results/teachers/{kind}/rerank/metrics.parquet",
    params:
        split=config["eval_split"],
        depth=lambda w: config["evaluate"]["teacher_rerank"][f"{w.kind}_depth"],
        measures=config["evaluate"]["measures"],
        model=lambda w: teacher_model(w.kind),
        t=lambda w: config["teachers"][w.kind],
    log:
        "logs/rerank_teacher/{kind}.log",
    benchmark:
        "benchmarks/rerank_teacher/{kind}.tsv"
    threads: THREADS
    resources:
        mem_mb=8000,
        runtime=720,
    shell:
        PD + " rerank-{wildcards.kind} --run {input.run:q} --corpus {input.corpus:q} --queries {input.queries:q}"
        " --qrels {input.qrels:q} --out-dir results/teachers/{wildcards.kind}/rerank --split {params.split}"
        " --depth {params.depth} --measures {params.measures:q} --model {params.model:q}"
        " --family {params.t[family]} --max-length {params.t[max_length]} --batch-size {params.t[batch_size]}"
        " > {log} 2>&1"


rule summary:
    input:
        metric_files(),
    output:
        parquet="results/summary.parquet",
        tsv="results/summary.tsv",
    log:
        "logs/summary/summary.log",
    benchmark:
        "benchmarks/summary/summary.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        PD + " summary --metrics {input:q} --out {output.parquet:q} --out-tsv {output.tsv:q} > {log} 2>&1"
