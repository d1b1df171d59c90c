# The embedded default's own teachers, fitted once, outside the iteration loop: no MS MARCO
# reranker can be installed offline. With teachers.<kind>.model set to a path or a cached hub id
# none of these rules runs.


rule mine_negatives:
    """Hard negatives for the teachers: the iteration-0 retriever's top-k of the training queries."""
    input:
        checkpoint=ckpt(0),
        index=index_dir(0),
        queries=QUERIES,
        qrels=QRELS,
    output:
        "results/teachers/negatives.parquet",
    params:
        split=config["train_split"],
        k=config["teachers"]["mine"]["k"],
        max_queries=config["teachers"]["mine"]["max_queries"],
        seed=config["seed"],
        search=search_flags("retrieve"),
    log:
        "logs/mine_negatives/mine_negatives.log",
    benchmark:
        "benchmarks/mine_negatives/mine_negatives.tsv"
    threads: THREADS
    resources:
        **resources_of("mine_negatives"),
    shell:
        PD + " retrieve --checkpoint {input.checkpoint:q} --index {input.index:q} --queries {input.queries:q}"
        " --qrels {input.qrels:q} --out {output:q} --split {params.split} --k {params.k}"
        " --max-queries {params.max_queries} --seed {params.seed} {params.search} > {log} 2>&1"


rule fit_teacher:
    """Pointwise: a cross-encoder (sequence-classification head) with a localized contrastive loss.
    Pairwise: a classifier over (q, d_i, d_j) -> P(d_i > d_j), binary cross-entropy on both orders."""
    input:
        negatives="results/teachers/negatives.parquet",
        corpus=CORPUS,
        queries=QUERIES,
        qrels=QRELS,
    output:
        model=directory("results/teachers/{kind}/model"),
        loss="results/teachers/{kind}/fit_loss.parquet",
    params:
        split=config["train_split"],
        fit=lambda w: config["teachers"][w.kind]["fit"],
        seed=config["seed"],
    log:
        "logs/fit_teacher/{kind}.log",
    benchmark:
        "benchmarks/fit_teacher/{kind}.tsv"
    threads: THREADS
    resources:
        **resources_of("fit_teacher"),
    shell:
        PD + " fit-teacher --kind {wildcards.kind} --negatives {input.negatives:q} --corpus {input.corpus:q}"
        " --queries {input.queries:q} --qrels {input.qrels:q} --out {output.model:q} --loss-out {output.loss:q}"
        " --split {params.split} --negatives-per-query {params.fit[negatives]} --init {params.fit[init]:q}"
        " --max-length {params.fit[max_length]} --batch-size {params.fit[batch_size]}"
        " --epochs {params.fit[epochs]} --lr {params.fit[lr]} --warmup {params.fit[warmup]}"
        " --seed {params.seed} > {log} 2>&1"
