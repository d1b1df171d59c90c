# Ablations (the paper's Tables 3 and 6), a target of their own: `snakemake ablations`. A variant
# of config `ablations.variants` that changes only train.* settings trains on the full method's
# teacher scores of every round (iteration 0 is shared), so only training, indexing and evaluation
# run for it. A variant that changes a setting upstream of training (teachers, top-k, pairs, ...)
# runs the whole workflow again with its config, included below as a Snakemake module whose
# results/, logs/ and benchmarks/ are moved under .../ablations/<variant>/. Either way a variant's
# files are under results/ablations/<variant>/, and one table compares them all with the full method.
import re
import shlex

from pairdistill import ablations as ablation_settings  # noqa: E402  (src/ is on the path: common.smk)

try:  # an unknown key, a shared key, a colliding name, a refused value: one line naming it
    VARIANTS = ablation_settings.variants(config)  # name -> the variant's complete train settings
    ABLATIONS = ablation_settings.requested(config, VARIANTS)
    _UPSTREAM = ablation_settings.upstream_configs(config)  # every declared one's: name -> complete config
    UPSTREAM_CONFIGS = {name: c for name, c in _UPSTREAM.items() if name in ABLATIONS}
    SHARED_STAGES = ablation_settings.shared_stages(config)  # upstream name -> stages taken from the full run
except ValueError as exc:
    raise WorkflowError(str(exc)) from None
for _name in ABLATIONS:  # micro_batch, precision, ... against the training resources, as the full method's
    check_training(VARIANTS[_name], int(resources_of("train").get("gpu", 0)), key=f"ablations.variants.{_name}.train")
# the variants whose rules are below; the others' are the module's own rules
TRAIN_ONLY = [v for v in VARIANTS if v not in _UPSTREAM]


wildcard_constraints:
    variant="|".join(re.escape(v) for v in TRAIN_ONLY) or "(?!)",


def _module_names():
    """A rule-name-safe, unique name for each declared variant (an upstream one's rules are
    <name>_<rule>): '.' and '-' become '_', and a name taken already gets a number."""
    names = {}
    for variant in VARIANTS:
        name = base = "ablation_" + re.sub(r"\W", "_", variant)
        n = 1
        while name in names.values():
            n += 1
            name = f"{base}_{n}"
        names[variant] = name
    return names


MODULE_NAMES = _module_names()


# The rules of each stage an upstream variant may share (ablations.SHARED_STAGE_READS): left out of
# its module when its settings leave the stage as it is, which rules ablation_shared_* replace by
# links to the full method's outputs. Those rules exist in the variant's module exactly as here:
# the settings that decide which teacher rules exist are the ones a shared stage reads.
SHARED_STAGE_RULES = {
    "data": ["prepare"],
    "teachers": ["mine_negatives", "fit_teacher", "fit_fusion_pointwise", "fit_fusion_pairwise", "rebase_teacher"],
}
SHARED_TEACHER_KINDS = [k for k in ("pointwise", "pairwise") if teacher_fitted(k) or rebased(k)]


def _sharing(stage):
    names = [re.escape(v) for v in UPSTREAM_CONFIGS if stage in SHARED_STAGES[v]]
    return "|".join(names) or "(?!)"


rule ablation_shared_data:
    """An upstream variant whose settings do not reach the data takes the full method's files."""
    input:
        "results/data/{name}.parquet",
    output:
        "results/ablations/{variant}/data/{name}.parquet",
    wildcard_constraints:
        variant=_sharing("data"),
        name="corpus|queries|qrels",
    log:
        "logs/ablations/{variant}/shared/data-{name}.log",
    threads: 1
    shell:
        PD + " link --src {input:q} --out {output:q} > {log} 2>&1"


rule ablation_shared_teacher:
    """An upstream variant whose settings do not reach the teachers takes the full method's fitted
    (or re-based) teacher directories."""
    input:
        "results/teachers/{kind}/model",
    output:
        directory("results/ablations/{variant}/teachers/{kind}/model"),
    wildcard_constraints:
        variant=_sharing("teachers"),
        kind="|".join(SHARED_TEACHER_KINDS) or "(?!)",
    log:
        "logs/ablations/{variant}/shared/teacher-{kind}.log",
    threads: 1
    shell:
        PD + " link --src {input:q} --out {output:q} > {log} 2>&1"


localrules: ablation_shared_data, ablation_shared_teacher


for _name, _config in UPSTREAM_CONFIGS.items():
    # The workflow once more, with the variant's config; every relative path it writes moves from
    # results/ (logs/, benchmarks/) to results/ablations/<variant>/ (...), input functions included.
    # Only the jobs its evaluation runs need are planned: data, teachers, each round, evaluation.
    workflow.module(
        MODULE_NAMES[_name],
        snakefile=os.path.join(workflow.basedir, "Snakefile"),
        config=_config,
        replace_prefix={f"{d}/": f"{d}/ablations/{_name}/" for d in ("results", "logs", "benchmarks")},
    )
    workflow.userule(rules=["*"], from_module=MODULE_NAMES[_name], name_modifier=f"{MODULE_NAMES[_name]}_*",
                     exclude_rules=[r for stage in SHARED_STAGES[_name] for r in SHARED_STAGE_RULES[stage]
                                    if r in workflow._rules])(lambda: None)


def ablation_dir(variant, it):
    return f"results/ablations/{variant}/iter-{it}"


def ablation_ckpt(variant, it):
    """Round {it}-1's checkpoint of a variant: iteration 0's is the full method's, shared."""
    return ckpt(0) if int(it) == 0 else f"{ablation_dir(variant, it)}/checkpoint"


def ablation_runs():
    """(seed, variant, iteration, split, run file) of every requested variant under every seed, the
    full method first. A variant upstream of training runs under the primary seed only (its module
    would hold a module per seed); a train-only one under every seed, in that seed's directory."""
    out = []
    for seed in SEEDS:
        root = seed_dir(seed)
        names = ["full", *(v for v in ABLATIONS if seed == SEEDS[0] or v in TRAIN_ONLY)]
        out += [(seed, v, n, split, f"{root}/iter-{n}/eval/{split}/run.parquet" if v == "full"
                 else f"{root}/ablations/{v}/iter-{n}/eval/{split}/run.parquet")
                for v in names for n in range(1, ITERATION + 1) for split in EVAL_SPLITS]
    return out


rule ablation_train:
    """Variant {variant}, round {it}: its checkpoint {it}-1 trained on the full method's round-{it}
    teacher scores with the variant's train settings (the full method's `train` stage and flags)."""
    input:
        checkpoint=lambda w: ablation_ckpt(w.variant, int(w.it) - 1),
        corpus=CORPUS,
        queries=QUERIES,
        qrels=QRELS,
        pointwise="results/iter-{it}/pointwise.parquet",
        pairwise="results/iter-{it}/pairwise.parquet",
    output:
        checkpoint=directory("results/ablations/{variant}/iter-{it}/checkpoint"),
        loss="results/ablations/{variant}/iter-{it}/train_loss.parquet",
    wildcard_constraints:
        it=r"[1-9]\d*",
    params:
        split=config["train_split"],
        t=lambda w: ablation_settings.train_flags(VARIANTS[w.variant]),
        student=config["student"],
        seed=config["seed"],
    log:
        "logs/ablations/{variant}/train/iter-{it}.log",
    benchmark:
        "benchmarks/ablations/{variant}/train/iter-{it}.tsv"
    threads: THREADS
    resources:
        **resources_of("train"),
        save_every=lambda w: train_speed(VARIANTS[w.variant])["save_every"],
        micro_batch=lambda w: train_speed(VARIANTS[w.variant])["micro_batch"],
        grad_checkpointing=lambda w: train_speed(VARIANTS[w.variant])["grad_checkpointing"],
    shell:
        PD + " train --checkpoint {input.checkpoint:q} --corpus {input.corpus:q} --queries {input.queries:q}"
        " --qrels {input.qrels:q} --pointwise {input.pointwise:q} --pairwise {input.pairwise:q}"
        " --out {output.checkpoint:q} --loss-out {output.loss:q} --split {params.split} {params.t}"
        " --state-dir \"$(dirname {output.checkpoint:q})/train_state\""
        " --save-every {resources.save_every} --micro-batch {resources.micro_batch}"
        " --grad-checkpointing {resources.grad_checkpointing} --processes {resources.gpu}"
        " --query-maxlen {params.student[query_maxlen]} --doc-maxlen {params.student[doc_maxlen]}"
        " --seed {params.seed} > {log} 2>&1"


use rule index as ablation_index with:
    input:
        checkpoint="results/ablations/{variant}/iter-{it}/checkpoint",
        corpus=CORPUS,
    output:
        directory("results/ablations/{variant}/iter-{it}/index"),
    log:
        "logs/ablations/{variant}/index/iter-{it}.log",
    benchmark:
        "benchmarks/ablations/{variant}/index/iter-{it}.tsv"


rule ablation_evaluate:
    input:
        checkpoint="results/ablations/{variant}/iter-{it}/checkpoint",
        index="results/ablations/{variant}/iter-{it}/index",
        queries=QUERIES,
        qrels=QRELS,
    output:
        run="results/ablations/{variant}/iter-{it}/eval/{split}/run.parquet",
        trec="results/ablations/{variant}/iter-{it}/eval/{split}/run.trec",
        metrics="results/ablations/{variant}/iter-{it}/eval/{split}/metrics.parquet",
    params:
        k=config["evaluate"]["k"],
        measures=lambda w: measures(w.split),
        search=search_flags("evaluate"),
        eval_set=lambda w: f"{config['dataset']}/{w.split}",
        **inference_params(),
    log:
        "logs/ablations/{variant}/evaluate/iter-{it}/{split}.log",
    benchmark:
        "benchmarks/ablations/{variant}/evaluate/iter-{it}/{split}.tsv"
    threads: THREADS
    resources:
        **resources_of("evaluate"),
    shell:
        PD + " evaluate --checkpoint {input.checkpoint:q} --index {input.index:q} --queries {input.queries:q}"
        " --qrels {input.qrels:q} --out-dir \"$(dirname {output.run:q})\""
        " --split {wildcards.split} --k {params.k} --measures {params.measures:q} --iteration {wildcards.it}"
        " --eval-set {params.eval_set:q} {params.search}" + inference_flags() + " > {log} 2>&1"


def ablation_references():
    """(seed, name, split, run file) of the systems the full method's last iteration is also tested
    against under each seed: the starting retriever and, with fusion teachers, BM25 and the teacher
    reranking (BM25 and the bi-encoder are the same files for every seed)."""
    refs = []
    for seed in SEEDS:
        root = seed_dir(seed)
        refs += [(seed, "iteration 0", split, f"{root}/iter-0/eval/{split}/run.parquet") for split in EVAL_SPLITS]
        if fusion_fitted():
            split = EVAL_SPLITS[0]
            refs += [(seed, "BM25", split, "results/baselines/bm25/run.parquet"),
                     (seed, "bi-encoder", split, "results/baselines/biencoder/run.parquet")]
            if teacher_rerank_enabled():
                refs += [(seed, "pointwise teacher", split, f"{root}/teachers/pointwise/rerank/run.parquet")]
    return refs


rule ablation_table:
    """Every requested variant against the full method, per iteration, split and measure, over the
    seeds: the mean difference, its sd over seeds, a paired t-test over the queries of the
    seed-averaged scores and a t-test over the seeds (pairdistill.ablations.TEST)."""
    input:
        runs=[run for *_, run in ablation_runs()],
        references=list(dict.fromkeys(run for *_, run in ablation_references())),
        qrels=QRELS,
    output:
        parquet="results/ablations.parquet",
        tsv=report("results/ablations.tsv", caption="../report/ablations.rst", category="5. Ablations"),
    params:
        runs=" ".join(shlex.join(["--run", str(seed), v, str(n), split, run]) for seed, v, n, split, run in ablation_runs()),
        references=" ".join(shlex.join(["--reference", str(seed), name, split, run])
                            for seed, name, split, run in ablation_references()),
        measures=" ".join(shlex.join(["--measures", split, *measures(split)]) for split in EVAL_SPLITS),
        dataset=config["dataset"],
    log:
        "logs/ablations/table.log",
    benchmark:
        "benchmarks/ablations/table.tsv"
    threads: 1
    resources:
        **resources_of("summary"),
    shell:
        PD + " ablation-table {params.runs} {params.references} {params.measures} --qrels {input.qrels:q} --dataset {params.dataset:q}"
        " --out {output.parquet:q} --out-tsv {output.tsv:q} > {log} 2>&1"


rule ablations:
    """Target: the ablation table and its figure (not part of `all`)."""
    input:
        "results/ablations.parquet",
        "results/figures/ablations.png",
