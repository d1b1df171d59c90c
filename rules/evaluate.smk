# Each retriever on the evaluation split, each teacher as a reranker, and the summary table.


rule evaluate:
    input:
        checkpoint="results/iter-{it}/checkpoint",
        index="results/iter-{it}/index",
        queries=QUERIES,
        qrels=QRELS,
    output:
        run="results/iter-{it}/eval/{split}/run.parquet",
        trec="results/iter-{it}/eval/{split}/run.trec",
        metrics="results/iter-{it}/eval/{split}/metrics.parquet",
    params:
        k=config["evaluate"]["k"],
        measures=lambda w: measures(w.split),
        search=search_flags("evaluate"),
        eval_set=lambda w: f"{config['dataset']}/{w.split}",
        **inference_params(),
    log:
        "logs/evaluate/iter-{it}/{split}.log",
    benchmark:
        "benchmarks/evaluate/iter-{it}/{split}.tsv"
    threads: THREADS
    resources:
        **resources_of("evaluate"),
    shell:
        PD + " evaluate --checkpoint {input.checkpoint:q} --index {input.index:q} --queries {input.queries:q}"
        " --qrels {input.qrels:q} --out-dir \"$(dirname {output.run:q})\""
        " --split {wildcards.split} --k {params.k} --measures {params.measures:q} --iteration {wildcards.it}"
        " --eval-set {params.eval_set:q} {params.search}" + inference_flags() + " > {log} 2>&1"


rule evaluate_beir:
    input:
        checkpoint="results/iter-{it}/checkpoint",
        index="results/iter-{it}/beir/{beir}/index",
        queries="results/beir/{beir}/queries.parquet",
        qrels="results/beir/{beir}/qrels.parquet",
    output:
        run="results/iter-{it}/beir/{beir}/eval/run.parquet",
        trec="results/iter-{it}/beir/{beir}/eval/run.trec",
        metrics="results/iter-{it}/beir/{beir}/eval/metrics.parquet",
    params:
        split=BEIR["split"],
        k=BEIR["k"],
        measures=BEIR["measures"],
        search=search_flags("evaluate"),
        **inference_params(),
    log:
        "logs/evaluate_beir/iter-{it}/{beir}.log",
    benchmark:
        "benchmarks/evaluate_beir/iter-{it}/{beir}.tsv"
    threads: THREADS
    resources:
        **resources_of("evaluate_beir"),
    shell:
        PD + " evaluate --checkpoint {input.checkpoint:q} --index {input.index:q} --queries {input.queries:q}"
        " --qrels {input.qrels:q} --out-dir \"$(dirname {output.run:q})\""
        " --split {params.split} --k {params.k} --measures {params.measures:q} --iteration {wildcards.it}"
        " --eval-set beir/{wildcards.beir}/{params.split} {params.search}" + inference_flags() + " > {log} 2>&1"


def rerank_source(kind):
    # the pointwise teacher reranks iteration 0's run; the pairwise teacher the pointwise teacher's
    return f"results/iter-0/eval/{EVAL_SPLITS[0]}/run.parquet" if kind == "pointwise" else "results/teachers/pointwise/rerank/run.parquet"


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
        split=EVAL_SPLITS[0],
        depth=lambda w: config["evaluate"]["teacher_rerank"][f"{w.kind}_depth"],
        measures=config["evaluate"]["measures"],
        model=teacher_model_param(),
        t=lambda w: teacher_settings(w.kind, "family", "max_length", "batch_size", "precision"),
        eval_set=f"{config['dataset']}/{EVAL_SPLITS[0]}",
        **({"own": lambda w: instruct_args(w.kind)} if instructed("pointwise") or instructed("pairwise") else {}),
        **inference_params("{kind}"),
    log:
        "logs/rerank_teacher/{kind}.log",
    benchmark:
        "benchmarks/rerank_teacher/{kind}.tsv"
    threads: THREADS
    resources:
        **resources_of("rerank_teacher"),
    shell:
        PD + " rerank-{wildcards.kind} --run {input.run:q} --corpus {input.corpus:q} --queries {input.queries:q}"
        " --qrels {input.qrels:q} --out-dir \"$(dirname {output.run:q})\" --split {params.split}"
        " --depth {params.depth} --measures {params.measures:q} --model {params.model:q}"
        " --family {params.t[family]} --max-length {params.t[max_length]} --batch-size {params.t[batch_size]}"
        " --precision {params.t[precision]}"
        " --eval-set {params.eval_set:q}"
        + (" {params.own}" if instructed("pointwise") or instructed("pairwise") else "") + inference_flags("{kind}") + " > {log} 2>&1"


rule summary:
    """All metrics in one table, and the teacher-score cache's hit rate per iteration."""
    input:
        metrics=metric_files(),
        teacher_scores=teacher_score_files(),
    output:
        parquet="results/summary.parquet",
        tsv=report("results/summary.tsv", caption="../report/summary.rst", category="3. Evaluation"),
        cache="results/teacher_cache.tsv",
    log:
        "logs/summary/summary.log",
    benchmark:
        "benchmarks/summary/summary.tsv"
    threads: 1
    resources:
        **resources_of("summary"),
    shell:
        PD + " summary --metrics {input.metrics:q} --out {output.parquet:q} --out-tsv {output.tsv:q}"
        " --teacher-scores {input.teacher_scores:q} --cache-out {output.cache:q} > {log} 2>&1"


rule rerank_plain_fusion:
    """The plain BM25 + bi-encoder fusion reranking the same top-k as the pointwise teacher: what
    the fitted parts of the fusion teacher must add to."""
    input:
        run=rerank_source("pointwise"),
        corpus=CORPUS,
        queries=QUERIES,
        qrels=QRELS,
        teacher=PLAIN_FUSION,
    output:
        run="results/teachers/plain_fusion/rerank/run.parquet",
        trec="results/teachers/plain_fusion/rerank/run.trec",
        metrics="results/teachers/plain_fusion/rerank/metrics.parquet",
    params:
        split=EVAL_SPLITS[0],
        depth=config["evaluate"]["teacher_rerank"]["pointwise_depth"],
        measures=config["evaluate"]["measures"],
        batch_size=config["teachers"]["pointwise"]["batch_size"],
        eval_set=f"{config['dataset']}/{EVAL_SPLITS[0]}",
        **inference_params(),
    log:
        "logs/rerank_teacher/plain_fusion.log",
    benchmark:
        "benchmarks/rerank_teacher/plain_fusion.tsv"
    threads: THREADS
    resources:
        **resources_of("rerank_teacher"),
    shell:
        PD + " rerank-pointwise --run {input.run:q} --corpus {input.corpus:q} --queries {input.queries:q}"
        " --qrels {input.qrels:q} --out-dir \"$(dirname {output.run:q})\" --split {params.split}"
        " --depth {params.depth} --measures {params.measures:q} --model {input.teacher:q} --family fusion"
        " --max-length 0 --batch-size {params.batch_size} --eval-set {params.eval_set:q}"
        " --system 'plain BM25 + bi-encoder fusion (top-{params.depth} of iteration 0)'" + inference_flags() + " > {log} 2>&1"


rule pair_accuracy:
    """Table 5's pair accuracy: the student (iteration 0), the pointwise and the pairwise teacher
    on the same judged pairs of the pointwise teacher's reranked top-k."""
    input:
        student=f"results/iter-0/eval/{EVAL_SPLITS[0]}/run.parquet",
        pointwise="results/teachers/pointwise/rerank/run.parquet",
        corpus=CORPUS,
        queries=QUERIES,
        qrels=QRELS,
        teacher=teacher_input("pairwise"),
    output:
        pairs="results/teachers/pair_accuracy/pairs.parquet",
        metrics="results/teachers/pair_accuracy/metrics.parquet",
    params:
        split=EVAL_SPLITS[0],
        depth=pair_accuracy_depth(),
        delta=config["pairs"]["delta"],
        model=teacher_model_param("pairwise"),
        t=teacher_settings("pairwise", "family", "max_length", "batch_size", "precision"),
        eval_set=f"{config['dataset']}/{EVAL_SPLITS[0]}",
        point_system=f"pointwise teacher (top-{config['evaluate']['teacher_rerank']['pointwise_depth']} of iteration 0)",
        pair_system=f"pairwise teacher (top-{config['evaluate']['teacher_rerank']['pairwise_depth']} of the pointwise teacher)",
        **inference_params("pairwise"),
    log:
        "logs/pair_accuracy/pair_accuracy.log",
    benchmark:
        "benchmarks/pair_accuracy/pair_accuracy.tsv"
    threads: THREADS
    resources:
        **resources_of("rerank_teacher"),
    shell:
        PD + " pair-accuracy --student-run {input.student:q} --pointwise-run {input.pointwise:q}"
        " --corpus {input.corpus:q} --queries {input.queries:q} --qrels {input.qrels:q} --out {output.pairs:q}"
        " --metrics-out {output.metrics:q} --split {params.split} --depth {params.depth} --delta {params.delta}"
        " --model {params.model:q} --family {params.t[family]} --max-length {params.t[max_length]}"
        " --batch-size {params.t[batch_size]} --precision {params.t[precision]} --eval-set {params.eval_set:q}"
        " --pointwise-system {params.point_system:q} --pairwise-system {params.pair_system:q}"
        + instruct_flags("pairwise") + inference_flags("pairwise") + " > {log} 2>&1"


rule corpus_baselines:
    """BM25, the bi-encoder and the fusion teacher as first-stage rankers over the whole corpus."""
    input:
        teacher="results/teachers/pointwise/model",
        queries=QUERIES,
        qrels=QRELS,
    output:
        metrics="results/baselines/metrics.parquet",
        runs=expand("results/baselines/{system}/run.parquet", system=("bm25", "biencoder", "teacher")),
    params:
        split=EVAL_SPLITS[0],
        k=config["evaluate"]["k"],
        measures=config["evaluate"]["measures"],
        eval_set=f"{config['dataset']}/{EVAL_SPLITS[0]}",
        **inference_params(),
    log:
        "logs/corpus_baselines/corpus_baselines.log",
    benchmark:
        "benchmarks/corpus_baselines/corpus_baselines.tsv"
    threads: THREADS
    resources:
        **resources_of("evaluate"),
    shell:
        PD + " corpus-baselines --teacher {input.teacher:q} --queries {input.queries:q} --qrels {input.qrels:q}"
        " --out-dir \"$(dirname {output.metrics:q})\" --split {params.split} --k {params.k} --measures {params.measures:q}"
        " --eval-set {params.eval_set:q}" + inference_flags() + " > {log} 2>&1"
