# The training collection (BEIR layout or MS MARCO TSV files) and each BEIR collection used for
# zero-shot evaluation, validated and written as Parquet.


rule prepare:
    """The collection as Parquet; with query_splits, the derived splits cut (seeded) from their sources."""
    input:
        input_files(DATA_DIR, config["dataset"], config["format"], config.get("files"), LOADED_SPLITS),
    output:
        corpus=CORPUS,
        queries=QUERIES,
        qrels=QRELS,
    params:
        data_dir=DATA_DIR,
        dataset=config["dataset"],
        splits=PREPARED_SPLITS,
        format=config["format"],
        files=json.dumps(config.get("files") or None),
        # only with derived splits, so that a run without them keeps its params and command
        **({"derived": json.dumps(QUERY_SPLITS, sort_keys=True), "seed": config["seed"]} if QUERY_SPLITS else {}),
    log:
        "logs/prepare/prepare.log",
    benchmark:
        "benchmarks/prepare/prepare.tsv"
    threads: 1
    resources:
        **resources_of("prepare"),
    shell:
        PD + " prepare --data-dir {params.data_dir:q} --dataset {params.dataset:q} --splits {params.splits}"
        " --format {params.format} --files {params.files:q} --out-dir \"$(dirname {output.corpus:q})\""
        + (" --query-splits {params.derived:q} --seed {params.seed}" if QUERY_SPLITS else "") + " > {log} 2>&1"


rule prepare_beir:
    input:
        lambda w: input_files(DATA_DIR, w.beir, "beir", None, [BEIR["split"]]),
    output:
        corpus="results/beir/{beir}/corpus.parquet",
        queries="results/beir/{beir}/queries.parquet",
        qrels="results/beir/{beir}/qrels.parquet",
    params:
        data_dir=DATA_DIR,
        split=BEIR["split"],
    log:
        "logs/prepare_beir/{beir}.log",
    benchmark:
        "benchmarks/prepare_beir/{beir}.tsv"
    threads: 1
    resources:
        **resources_of("prepare_beir"),
    shell:
        PD + " prepare --data-dir {params.data_dir:q} --dataset {wildcards.beir:q} --splits {params.split}"
        " --format beir --out-dir \"$(dirname {output.corpus:q})\" > {log} 2>&1"
