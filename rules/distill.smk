# Teacher signals for round {it}, one job per query shard (config `shards`): pointwise scores of the
# top-k, sampled pairs, pairwise scores; then one gathered file per stage. Scoring jobs reuse what
# the same teacher scored for the same shard in earlier rounds, and write resumable parts.


rule pointwise:
    input:
        topk="results/iter-{it}/train_topk/shard-{shard}.parquet",
        corpus=CORPUS,
        queries=QUERIES,
        qrels=QRELS,
        teacher=teacher_input("pointwise"),
        cache=score_cache("pointwise"),
    output:
        "results/iter-{it}/pointwise/shard-{shard}.parquet",
    params:
        split=config["train_split"],
        model=teacher_model_param("pointwise"),
        t=teacher_settings("pointwise", "family", "max_length", "add_positives", "precision"),
        **inference_params("pointwise"),
    log:
        "logs/pointwise/iter-{it}/shard-{shard}.log",
    benchmark:
        "benchmarks/pointwise/iter-{it}/shard-{shard}.tsv"
    threads: THREADS
    resources:
        **resources_of("pointwise"),
        **speed_settings("pointwise"),
    shell:
        PD + " pointwise --topk {input.topk:q} --corpus {input.corpus:q} --queries {input.queries:q}"
        " --qrels {input.qrels:q} --out {output:q} --split {params.split} --model {params.model:q}"
        " --family {params.t[family]} --max-length {params.t[max_length]} --batch-size {resources.batch_size}"
        " --precision {params.t[precision]}"
        " --add-positives {params.t[add_positives]} --part-rows {resources.part_rows} --cache {input.cache:q}"
        + instruct_flags("pointwise") + inference_flags("pointwise") + " > {log} 2>&1"


rule sample_pairs:
    input:
        "results/iter-{it}/pointwise/shard-{shard}.parquet",
    output:
        "results/iter-{it}/pairs/shard-{shard}.parquet",
    params:
        delta=config["pairs"]["delta"],
        per_query=config["pairs"]["per_query"],
        seed=config["seed"],
    log:
        "logs/sample_pairs/iter-{it}/shard-{shard}.log",
    benchmark:
        "benchmarks/sample_pairs/iter-{it}/shard-{shard}.tsv"
    threads: 1
    resources:
        **resources_of("sample_pairs"),
    shell:
        PD + " sample-pairs --pointwise {input:q} --out {output:q} --delta {params.delta}"
        " --pairs-per-query {params.per_query} --seed {params.seed} --iteration {wildcards.it} > {log} 2>&1"


rule pairwise:
    input:
        pairs="results/iter-{it}/pairs/shard-{shard}.parquet",
        corpus=CORPUS,
        queries=QUERIES,
        teacher=teacher_input("pairwise"),
        cache=score_cache("pairwise"),
    output:
        "results/iter-{it}/pairwise/shard-{shard}.parquet",
    params:
        model=teacher_model_param("pairwise"),
        t=teacher_settings("pairwise", "family", "max_length", "both_orders", "precision"),
        **inference_params("pairwise"),
    log:
        "logs/pairwise/iter-{it}/shard-{shard}.log",
    benchmark:
        "benchmarks/pairwise/iter-{it}/shard-{shard}.tsv"
    threads: THREADS
    resources:
        **resources_of("pairwise"),
        **speed_settings("pairwise"),
    shell:
        PD + " pairwise --pairs {input.pairs:q} --corpus {input.corpus:q} --queries {input.queries:q}"
        " --out {output:q} --model {params.model:q} --family {params.t[family]}"
        " --max-length {params.t[max_length]} --batch-size {resources.batch_size} --precision {params.t[precision]}"
        " --both-orders {params.t[both_orders]} --part-rows {resources.part_rows} --cache {input.cache:q}"
        + instruct_flags("pairwise") + inference_flags("pairwise") + " > {log} 2>&1"


rule gather:
    """results/iter-{it}/{stage}.parquet: every shard's rows, streamed into one file."""
    input:
        lambda w: shard_files(w.it, w.stage),
    output:
        "results/iter-{it}/{stage}.parquet",
    params:
        schema=lambda w: SHARDED[w.stage],
    log:
        "logs/gather/iter-{it}/{stage}.log",
    benchmark:
        "benchmarks/gather/iter-{it}/{stage}.tsv"
    threads: 1
    resources:
        **resources_of("gather"),
    shell:
        PD + " gather --shards {input:q} --schema {params.schema} --out {output:q} > {log} 2>&1"
