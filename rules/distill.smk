# Teacher signals for round {it}: pointwise scores of the top-k, sampled pairs, pairwise scores.


rule pointwise:
    input:
        topk="results/iter-{it}/train_topk.parquet",
        corpus=CORPUS,
        queries=QUERIES,
        qrels=QRELS,
        teacher=teacher_input("pointwise"),
    output:
        "results/iter-{it}/pointwise.parquet",
    params:
        split=config["train_split"],
        model=teacher_model("pointwise"),
        t=config["teachers"]["pointwise"],
    log:
        "logs/pointwise/iter-{it}.log",
    benchmark:
        "benchmarks/pointwise/iter-{it}.tsv"
    threads: THREADS
    resources:
        mem_mb=8000,
        runtime=720,
    shell:
        PD + " pointwise --topk {input.topk:q} --corpus {input.corpus:q} --queries {input.queries:q}"
        " --qrels {input.qrels:q} --out {output:q} --split {params.split} --model {params.model:q}"
        " --family {params.t[family]} --max-length {params.t[max_length]} --batch-size {params.t[batch_size]}"
        " --add-positives {params.t[add_positives]} > {log} 2>&1"


rule sample_pairs:
    input:
        "results/iter-{it}/pointwise.parquet",
    output:
        "results/iter-{it}/pairs.parquet",
    params:
        delta=config["pairs"]["delta"],
        per_query=config["pairs"]["per_query"],
        seed=config["seed"],
    log:
        "logs/sample_pairs/iter-{it}.log",
    benchmark:
        "benchmarks/sample_pairs/iter-{it}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        PD + " sample-pairs --pointwise {input:q} --out {output:q} --delta {params.delta}"
        " --pairs-per-query {params.per_query} --seed {params.seed} > {log} 2>&1"


rule pairwise:
    input:
        pairs="results/iter-{it}/pairs.parquet",
        corpus=CORPUS,
        queries=QUERIES,
        teacher=teacher_input("pairwise"),
    output:
        "results/iter-{it}/pairwise.parquet",
    params:
        model=teacher_model("pairwise"),
        t=config["teachers"]["pairwise"],
    log:
        "logs/pairwise/iter-{it}.log",
    benchmark:
        "benchmarks/pairwise/iter-{it}.tsv"
    threads: THREADS
    resources:
        mem_mb=8000,
        runtime=720,
    shell:
        PD + " pairwise --pairs {input.pairs:q} --corpus {input.corpus:q} --queries {input.queries:q}"
        " --out {output:q} --model {params.model:q} --family {params.t[family]}"
        " --max-length {params.t[max_length]} --batch-size {params.t[batch_size]}"
        " --both-orders {params.t[both_orders]} > {log} 2>&1"
