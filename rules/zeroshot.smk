# Zero-shot evaluation beyond BEIR (beir_eval is in data.smk, retriever.smk and evaluate.smk):
# LoTTE's topics (lotte_eval) and DPR's open-domain QA sets (qa_eval). Each collection is prepared
# once, indexed by every round's retriever, and searched by its question sets every round.


rule prepare_lotte:
    """A LoTTE topic of lotte_eval.split: its collection; each query set's questions as a split
    (search, forum); each question's answer passages (qas.<set>.jsonl) as qrels of relevance 1."""
    input:
        lambda w: lotte_files(w.lotte),
    output:
        corpus="results/lotte/{lotte}/corpus.parquet",
        queries="results/lotte/{lotte}/queries.parquet",
        qrels="results/lotte/{lotte}/qrels.parquet",
    params:
        root=LOTTE_ROOT,
        split=LOTTE["split"],
        query_sets=LOTTE["query_sets"],
    log:
        "logs/prepare_lotte/{lotte}.log",
    benchmark:
        "benchmarks/prepare_lotte/{lotte}.tsv"
    threads: 1
    resources:
        **resources_of("prepare_lotte"),
    shell:
        PD + " prepare-lotte --root {params.root:q} --topic {wildcards.lotte:q} --split {params.split:q}"
        " --query-sets {params.query_sets} --out-dir \"$(dirname {output.corpus:q})\" > {log} 2>&1"


rule prepare_qa_passages:
    """A passage collection of qa_eval.passages (DPR's psgs_w100.tsv), shared by its QA sets."""
    input:
        lambda w: qa_passages_file(w.qa_passages),
    output:
        corpus="results/qa/{qa_passages}/corpus.parquet",
    log:
        "logs/prepare_qa_passages/{qa_passages}.log",
    benchmark:
        "benchmarks/prepare_qa_passages/{qa_passages}.tsv"
    threads: 1
    resources:
        **resources_of("prepare_qa_passages"),
    shell:
        PD + " prepare-qa-passages --passages {input:q} --out {output.corpus:q} > {log} 2>&1"


rule prepare_qa:
    """A QA set of qa_eval.datasets (DPR's *.qa.csv): its questions and their answer strings."""
    input:
        lambda w: qa_questions_file(w.qa),
    output:
        queries="results/qa/{qa_passages}/{qa}/queries.parquet",
        answers="results/qa/{qa_passages}/{qa}/answers.parquet",
    log:
        "logs/prepare_qa/{qa_passages}/{qa}.log",
    benchmark:
        "benchmarks/prepare_qa/{qa_passages}/{qa}.tsv"
    threads: 1
    resources:
        **resources_of("prepare_qa"),
    shell:
        PD + " prepare-qa --questions {input:q} --name {wildcards.qa:q}"
        " --out-dir \"$(dirname {output.queries:q})\" > {log} 2>&1"


rule index_lotte:
    """A LoTTE topic indexed by retriever {it} (passage length lotte_eval.doc_maxlen)."""
    input:
        checkpoint="results/iter-{it}/checkpoint",
        corpus="results/lotte/{lotte}/corpus.parquet",
    output:
        directory("results/iter-{it}/lotte/{lotte}/index"),
    params:
        nbits=config["index"]["nbits"],
        doc_maxlen=LOTTE["doc_maxlen"],
        kmeans_niters=config["index"]["kmeans_niters"],
        reuse=config["index"]["reuse_sample_embeddings"],
        partitions=config["index"].get("num_partitions"),
        seed=config["seed"],
        **student_params("index"),  # a DPR student's faiss settings; none for ColBERT
        **inference_params(),
    log:
        "logs/index_lotte/iter-{it}/{lotte}.log",
    benchmark:
        "benchmarks/index_lotte/iter-{it}/{lotte}.tsv"
    threads: THREADS
    resources:
        **resources_of("index_lotte"),
    shell:
        PD + " index --checkpoint {input.checkpoint:q} --corpus {input.corpus:q} --out {output:q}"
        " --nbits {params.nbits} --doc-maxlen {params.doc_maxlen} --kmeans-niters {params.kmeans_niters}"
        " --reuse-sample-embeddings {params.reuse} --num-partitions {params.partitions} --seed {params.seed}"
        + student_flags("index") + inference_flags() + " > {log} 2>&1"


rule index_qa:
    """A QA passage collection indexed by retriever {it} (passage length qa_eval.doc_maxlen)."""
    input:
        checkpoint="results/iter-{it}/checkpoint",
        corpus="results/qa/{qa_passages}/corpus.parquet",
    output:
        directory("results/iter-{it}/qa/{qa_passages}/index"),
    params:
        nbits=config["index"]["nbits"],
        doc_maxlen=QA["doc_maxlen"],
        kmeans_niters=config["index"]["kmeans_niters"],
        reuse=config["index"]["reuse_sample_embeddings"],
        partitions=config["index"].get("num_partitions"),
        seed=config["seed"],
        **student_params("index"),  # a DPR student's faiss settings; none for ColBERT
        **inference_params(),
    log:
        "logs/index_qa/iter-{it}/{qa_passages}.log",
    benchmark:
        "benchmarks/index_qa/iter-{it}/{qa_passages}.tsv"
    threads: THREADS
    resources:
        **resources_of("index_qa"),
    shell:
        PD + " index --checkpoint {input.checkpoint:q} --corpus {input.corpus:q} --out {output:q}"
        " --nbits {params.nbits} --doc-maxlen {params.doc_maxlen} --kmeans-niters {params.kmeans_niters}"
        " --reuse-sample-embeddings {params.reuse} --num-partitions {params.partitions} --seed {params.seed}"
        + student_flags("index") + inference_flags() + " > {log} 2>&1"


rule evaluate_lotte:
    """Retriever {it} on a LoTTE topic's query set: its top-k, and lotte_eval.measures (Success@5:
    the share of questions with an answer passage in the top 5)."""
    input:
        checkpoint="results/iter-{it}/checkpoint",
        index="results/iter-{it}/lotte/{lotte}/index",
        queries="results/lotte/{lotte}/queries.parquet",
        qrels="results/lotte/{lotte}/qrels.parquet",
    output:
        run="results/iter-{it}/lotte/{lotte}/eval/{query_set}/run.parquet",
        trec="results/iter-{it}/lotte/{lotte}/eval/{query_set}/run.trec",
        metrics="results/iter-{it}/lotte/{lotte}/eval/{query_set}/metrics.parquet",
    params:
        k=LOTTE["k"],
        measures=LOTTE["measures"],
        search=search_flags("evaluate"),
        eval_set=lambda w: f"lotte/{w.lotte}/{LOTTE['split']}/{w.query_set}",
        **inference_params(),
    log:
        "logs/evaluate_lotte/iter-{it}/{lotte}/{query_set}.log",
    benchmark:
        "benchmarks/evaluate_lotte/iter-{it}/{lotte}/{query_set}.tsv"
    threads: THREADS
    resources:
        **resources_of("evaluate_lotte"),
    shell:
        PD + " evaluate --checkpoint {input.checkpoint:q} --index {input.index:q} --queries {input.queries:q}"
        " --qrels {input.qrels:q} --out-dir \"$(dirname {output.run:q})\""
        " --split {wildcards.query_set} --k {params.k} --measures {params.measures:q} --iteration {wildcards.it}"
        " --eval-set {params.eval_set:q} {params.search}" + inference_flags() + " > {log} 2>&1"


rule evaluate_qa:
    """Retriever {it} on a QA set: the top max(qa_eval.k) passages of each question, and Recall@k for
    each k (the share of questions with an answer string in a top-k passage's text)."""
    input:
        checkpoint="results/iter-{it}/checkpoint",
        index="results/iter-{it}/qa/{qa_passages}/index",
        corpus="results/qa/{qa_passages}/corpus.parquet",
        queries="results/qa/{qa_passages}/{qa}/queries.parquet",
        answers="results/qa/{qa_passages}/{qa}/answers.parquet",
    output:
        run="results/iter-{it}/qa/{qa_passages}/eval/{qa}/run.parquet",
        trec="results/iter-{it}/qa/{qa_passages}/eval/{qa}/run.trec",
        metrics="results/iter-{it}/qa/{qa_passages}/eval/{qa}/metrics.parquet",
    params:
        k=QA["k"],
        match=QA["match"],
        search=search_flags("evaluate"),
        eval_set=lambda w: f"qa/{w.qa}",
        **inference_params(),
    log:
        "logs/evaluate_qa/iter-{it}/{qa_passages}/{qa}.log",
    benchmark:
        "benchmarks/evaluate_qa/iter-{it}/{qa_passages}/{qa}.tsv"
    threads: THREADS
    resources:
        **resources_of("evaluate_qa"),
    shell:
        PD + " evaluate-qa --checkpoint {input.checkpoint:q} --index {input.index:q} --corpus {input.corpus:q}"
        " --queries {input.queries:q} --answers {input.answers:q} --out-dir \"$(dirname {output.run:q})\""
        " --k {params.k} --match {params.match} --iteration {wildcards.it} --eval-set {params.eval_set:q}"
        " {params.search}" + inference_flags() + " > {log} 2>&1"
