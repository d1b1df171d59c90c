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
        **inference_params(),
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
        " --max-queries {params.max_queries} --seed {params.seed} {params.search}" + inference_flags() + " > {log} 2>&1"


rule fit_teacher:
    """Pointwise: a cross-encoder (sequence-classification head) with a localized contrastive loss.
    Pairwise: a classifier over (q, d_i, d_j) -> P(d_i > d_j), binary cross-entropy on both orders."""
    wildcard_constraints:
        kind=kinds_fitted_as("cross-encoder", "bert-pairwise"),
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


# The fusion teachers' rules exist only when fitted that way: they write the same model
# directories as fit_teacher.
if fit_method("pointwise") == "fusion" and not rebased("pointwise"):

    rule fit_fusion_pointwise:
        """BM25 and the bi-encoder over the corpus, the bi-encoder fine-tuned on the training queries
        but a held-out share, and the fusion weights fitted on that share (pairdistill.teachers.fusion). Also
        writes the plain BM25 + bi-encoder fusion, the baseline the teacher must beat."""
        input:
            corpus=CORPUS,
            queries=QUERIES,
            qrels=QRELS,
        output:
            model=directory("results/teachers/pointwise/model"),
            plain=directory(PLAIN_FUSION),
            loss="results/teachers/pointwise/fit_loss.parquet",
        params:
            split=config["train_split"],
            fit=config["teachers"]["pointwise"]["fit"],
            f=fusion_settings("pointwise"),
            seed=config["seed"],
            **inference_params(),
        log:
            "logs/fit_teacher/pointwise.log",
        benchmark:
            "benchmarks/fit_teacher/pointwise.tsv"
        threads: THREADS
        resources:
            **resources_of("fit_teacher"),
        shell:
            PD + " fit-fusion --kind pointwise --corpus {input.corpus:q} --queries {input.queries:q} --qrels {input.qrels:q}"
            " --out {output.model:q} --plain-out {output.plain:q} --loss-out {output.loss:q} --split {params.split}"
            " --init {params.fit[init]:q} --max-length {params.fit[max_length]} --heldout {params.f[heldout]}"
            " --candidates {params.f[candidates]} --negatives {params.fit[negatives]} --batch-size {params.fit[batch_size]}"
            " --epochs {params.fit[epochs]} --lr {params.fit[lr]} --warmup {params.fit[warmup]} --scale {params.f[scale]}"
            " --seed {params.seed}" + inference_flags() + " > {log} 2>&1"


if fit_method("pairwise") == "fusion-pairwise" and not rebased("pairwise"):

    rule fit_fusion_pairwise:
        """The pair terms on top of the fusion pointwise teacher, fitted on its held-out queries."""
        input:
            pointwise="results/teachers/pointwise/model",
            corpus=CORPUS,
            queries=QUERIES,
            qrels=QRELS,
        output:
            model=directory("results/teachers/pairwise/model"),
            loss="results/teachers/pairwise/fit_loss.parquet",
        params:
            split=config["train_split"],
            f=fusion_settings("pairwise"),
            delta=config["pairs"]["delta"],
            seed=config["seed"],
            **inference_params(),
        log:
            "logs/fit_teacher/pairwise.log",
        benchmark:
            "benchmarks/fit_teacher/pairwise.tsv"
        threads: THREADS
        resources:
            **resources_of("fit_teacher"),
        shell:
            PD + " fit-fusion --kind pairwise --corpus {input.corpus:q} --queries {input.queries:q} --qrels {input.qrels:q}"
            " --out {output.model:q} --pointwise-dir {input.pointwise:q} --loss-out {output.loss:q} --split {params.split}"
            " --depth {params.f[depth]} --delta {params.delta} --seed {params.seed}"
            # only when set: the default's command (and so its finished jobs) stays as it was
            + (" --pair-features {params.f[pair_features]}" if "pair_features" in config["teachers"]["pairwise"]["fit"]
               else "") + inference_flags() + " > {log} 2>&1"


rule rebase_teacher:
    """Another run's fitted fusion teacher (teachers.{kind}.model, with rebase: true) on this run's
    corpus: BM25 statistics and corpus embeddings recomputed, the fitted weights and bi-encoders kept
    (pairdistill.teachers.fusion.rebase_fusion). With both kinds re-based, the pairwise teacher takes the
    corpus embeddings of the bi-encoders it shares with the pointwise one from it, instead of
    encoding the corpus a second time."""
    wildcard_constraints:
        kind="|".join(k for k in ("pointwise", "pairwise") if rebased(k)) or "(?!)",
    input:
        source=lambda w: config["teachers"][w.kind]["model"],
        corpus=CORPUS,
        reuse=lambda w: rebase_reuse(w.kind),
    output:
        model=directory("results/teachers/{kind}/model"),
    params:
        reuse=lambda w, input: "".join(f" --reuse {p}" for p in input.reuse),  # the input's path: moved in a module
        **inference_params(),
    log:
        "logs/rebase_teacher/{kind}.log",
    benchmark:
        "benchmarks/rebase_teacher/{kind}.tsv"
    threads: THREADS
    resources:
        **resources_of("fit_teacher"),
    shell:
        PD + " rebase-fusion --teacher {input.source:q} --corpus {input.corpus:q} --out {output.model:q}{params.reuse}"
        + inference_flags() + " > {log} 2>&1"
