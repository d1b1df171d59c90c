# The student: its iteration-0 checkpoint, a PLAID index per iteration, retrieval, training.


rule init_checkpoint:
    input:
        corpus=[CORPUS] if STUDENT_ARCH == "colbert" and config["student"].get("projection", "random") == "pca" else [],
    output:
        directory(ckpt(0)),
    params:
        base=config["student"]["init"],
        projection=config["student"].get("projection", "random"),
        passages=config["student"].get("projection_passages", 512),
        corpus=lambda w, input: f"--corpus {input.corpus[0]}" if input.corpus else "",
        dim=config["student"]["dim"],
        query_maxlen=config["student"]["query_maxlen"],
        doc_maxlen=config["student"]["doc_maxlen"],
        seed=config["seed"],
        **student_params("init"),  # a DPR student's settings; none for ColBERT
    log:
        "logs/init_checkpoint/iter-0.log",
    benchmark:
        "benchmarks/init_checkpoint/iter-0.tsv"
    threads: THREADS
    resources:
        **resources_of("init_checkpoint"),
    shell:
        PD + " init-checkpoint --base {params.base:q} --out {output:q} --dim {params.dim}"
        " --query-maxlen {params.query_maxlen} --doc-maxlen {params.doc_maxlen} --seed {params.seed}"
        " --projection {params.projection} --projection-passages {params.passages}"
        " {params.corpus}" + student_flags("init") +
        " > {log} 2>&1"


rule index:
    input:
        checkpoint="results/iter-{it}/checkpoint",
        corpus=CORPUS,
    output:
        directory("results/iter-{it}/index"),
    params:
        nbits=config["index"]["nbits"],
        doc_maxlen=config["student"]["doc_maxlen"],
        kmeans_niters=config["index"]["kmeans_niters"],
        reuse=config["index"]["reuse_sample_embeddings"],
        partitions=config["index"].get("num_partitions"),
        seed=config["seed"],
        **student_params("index"),
        **inference_params(),
    log:
        "logs/index/iter-{it}.log",
    benchmark:
        "benchmarks/index/iter-{it}.tsv"
    threads: THREADS
    resources:
        **resources_of("index"),
    shell:
        PD + " index --checkpoint {input.checkpoint:q} --corpus {input.corpus:q} --out {output:q}"
        " --nbits {params.nbits} --doc-maxlen {params.doc_maxlen} --kmeans-niters {params.kmeans_niters}"
        " --reuse-sample-embeddings {params.reuse} --num-partitions {params.partitions} --seed {params.seed}"
        + student_flags("index") + inference_flags() + " > {log} 2>&1"


rule retrieve:
    """Round {it} distills on the top-k of retriever {it}-1."""
    input:
        checkpoint=lambda w: ckpt(int(w.it) - 1),
        index=lambda w: index_dir(int(w.it) - 1),
        queries=QUERIES,
        qrels=QRELS,
    output:
        "results/iter-{it}/train_topk/shard-{shard}.parquet",
    wildcard_constraints:
        it=r"[1-9]\d*",
    params:
        split=config["train_split"],
        k=config["retrieve"]["top_k"],
        max_queries=config["retrieve"]["max_queries"],
        seed=config["seed"],
        search=search_flags("retrieve"),
        **inference_params(),
    log:
        "logs/retrieve/iter-{it}/shard-{shard}.log",
    benchmark:
        "benchmarks/retrieve/iter-{it}/shard-{shard}.tsv"
    threads: THREADS
    resources:
        **resources_of("retrieve"),
    shell:
        PD + " retrieve --checkpoint {input.checkpoint:q} --index {input.index:q} --queries {input.queries:q}"
        " --qrels {input.qrels:q} --out {output:q} --split {params.split} --k {params.k}"
        " --max-queries {params.max_queries} --seed {params.seed} --shard {wildcards.shard} {params.search}"
        + inference_flags() + " > {log} 2>&1"


rule train:
    """Checkpoint {it}-1 -> {it} with L = L_CL + lambda_KD L_KD + lambda_pair L_pair. A resumable
    state is saved every train.save_every steps in results/iter-{it}/train_state (not an output, so
    Snakemake keeps it when the job is killed); a rerun continues from it, and removes it at the end."""
    input:
        checkpoint=lambda w: ckpt(int(w.it) - 1),
        corpus=CORPUS,
        queries=QUERIES,
        qrels=QRELS,
        pointwise="results/iter-{it}/pointwise.parquet",
        pairwise="results/iter-{it}/pairwise.parquet",
        negatives=mined_negatives_input(),
    output:
        checkpoint=directory("results/iter-{it}/checkpoint"),
        loss="results/iter-{it}/train_loss.parquet",
    wildcard_constraints:
        it=r"[1-9]\d*",
    params:
        split=config["train_split"],
        t=train_settings(config["train"]),
        student=config["student"],
        seed=config["seed"],
        **student_params("train"),
    log:
        "logs/train/iter-{it}.log",
    benchmark:
        "benchmarks/train/iter-{it}.tsv"
    threads: THREADS
    resources:
        **resources_of("train"),
        **train_speed(config["train"]),  # how, not what: resources, so changing them reruns nothing
    shell:
        PD + " train --checkpoint {input.checkpoint:q} --corpus {input.corpus:q} --queries {input.queries:q}"
        " --qrels {input.qrels:q} --pointwise {input.pointwise:q} --pairwise {input.pairwise:q}"
        " --out {output.checkpoint:q} --loss-out {output.loss:q} --split {params.split}"
        " --nway {params.t[nway]} --batch-size {params.t[batch_size]} --epochs {params.t[epochs]}"
        " --max-steps {params.t[max_steps]} --lr {params.t[lr]} --warmup {params.t[warmup]}"
        " --weight-decay {params.t[weight_decay]} --lambda-kd {params.t[lambda_kd]}"
        " --lambda-pair {params.t[lambda_pair]} --temperature {params.t[temperature]}"
        " --use-labels {params.t[use_labels]} --unlabelled-queries {params.t[unlabelled_queries]}"
        " --in-batch-negatives {params.t[in_batch_negatives]} --precision {params.t[precision]}"
        " --contrastive-negatives {params.t[contrastive_negatives]} --mined-negatives {params.t[mined_negatives]:q}"
        " --mined-per-query {params.t[mined_per_query]}"
        " --micro-batch {resources.micro_batch} --grad-checkpointing {resources.grad_checkpointing}"
        " --processes {resources.gpu}"
        " --state-dir \"$(dirname {output.checkpoint:q})/train_state\" --save-every {resources.save_every}"
        " --query-maxlen {params.student[query_maxlen]} --doc-maxlen {params.student[doc_maxlen]}"
        " --seed {params.seed}" + student_flags("train") + " > {log} 2>&1"


rule index_beir:
    """Zero-shot evaluation collections, indexed by every iteration's retriever (passage length
    beir_eval.doc_maxlen, 300 in the paper). The index keeps how its collection is searched: the
    query length of beir_eval.query_maxlen (ArguAna 300, Climate-FEVER 64, else the student's) and
    whether a query's own document is dropped from its hits (beir_eval.drop_self_matches)."""
    input:
        checkpoint="results/iter-{it}/checkpoint",
        corpus="results/beir/{beir}/corpus.parquet",
    output:
        directory("results/iter-{it}/beir/{beir}/index"),
    params:
        nbits=config["index"]["nbits"],
        doc_maxlen=BEIR["doc_maxlen"],
        kmeans_niters=config["index"]["kmeans_niters"],
        reuse=config["index"]["reuse_sample_embeddings"],
        partitions=config["index"].get("num_partitions"),
        seed=config["seed"],
        query_maxlen=lambda w: beir_query_maxlen(w.beir),
        drop_self=lambda w: w.beir in BEIR.get("drop_self_matches", []),
        **student_params("index"),
        **inference_params(),
    log:
        "logs/index_beir/iter-{it}/{beir}.log",
    benchmark:
        "benchmarks/index_beir/iter-{it}/{beir}.tsv"
    threads: THREADS
    resources:
        **resources_of("index_beir"),
    shell:
        PD + " index --checkpoint {input.checkpoint:q} --corpus {input.corpus:q} --out {output:q}"
        " --nbits {params.nbits} --doc-maxlen {params.doc_maxlen} --kmeans-niters {params.kmeans_niters}"
        " --reuse-sample-embeddings {params.reuse} --num-partitions {params.partitions} --seed {params.seed}"
        " --query-maxlen {params.query_maxlen} --drop-self-matches {params.drop_self}" + student_flags("index")
        + inference_flags() + " > {log} 2>&1"
