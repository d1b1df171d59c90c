rule prepare:
    output:
        corpus=CORPUS,
        queries=QUERIES,
        qrels=QRELS,
    params:
        data_dir=DATA_DIR,
        dataset=config["dataset"],
        splits=sorted({config["train_split"], config["eval_split"]}),
    log:
        "logs/prepare/prepare.log",
    benchmark:
        "benchmarks/prepare/prepare.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        PD + " prepare --data-dir {params.data_dir:q} --dataset {params.dataset} --splits {params.splits}"
        " --out-dir " + DATA + " > {log} 2>&1"
