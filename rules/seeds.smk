# Seeds (config `seeds`; pairdistill.seeds). The primary seed (the first, = `seed`) is the run at
# results/. Every other seed s runs the student side again as a module of this Snakefile whose
# results/, logs/ and benchmarks/ move under .../seeds/<s>/; the stages that no seed changes (the
# prepared data, the fitted teachers, the corpus baselines) are the primary's, hard-linked into
# results/seeds/<s>/ by the seed_shared_* rules below, so no teacher is fitted twice. A seed's
# teacher scoring reuses the primary seed's scores of the same teacher (common.smk: score_cache).
# results/seeds.{parquet,tsv} gives every number of the summary as mean ± sd over the seeds.
import re
import shlex

EXTRA_SEEDS = SEEDS[1:] if SEED_MODULE is None else []

# The rules whose outputs every seed shares: their settings do not read the seed the module
# changes (the data and the teachers are made under the primary seed, as fixed inputs).
SEED_SHARED_RULES = ["prepare", "prepare_beir", "prepare_lotte", "prepare_qa_passages", "prepare_qa",
                     "mine_negatives", "fit_teacher", "fit_fusion_pointwise", "fit_fusion_pairwise",
                     "rebase_teacher", "corpus_baselines"]
SEED_SHARED_RULES = [r for r in SEED_SHARED_RULES if r in workflow._rules]


if EXTRA_SEEDS:
    _SEED_RE = "|".join(str(s) for s in EXTRA_SEEDS)
    # one link rule per output of a shared rule: results/<path> -> results/seeds/<s>/<path>
    for _rule in SEED_SHARED_RULES:
        for _i, _out in enumerate(workflow._rules[_rule].output):
            _out = str(_out)
            if not _out.startswith("results/"):
                continue
            _is_dir = is_flagged(workflow._rules[_rule].output[_i], "directory")
            _plain = re.sub(r"\{(\w+),[^}]*\}", r"{\1}", _out)  # an inline constraint stays on the output
            _dst = "results/seeds/{seed}/" + _out[len("results/"):]

            rule:
                name:
                    f"seed_shared_{_rule}_{_i}"
                input:
                    _plain,
                output:
                    directory(_dst) if _is_dir else _dst,
                wildcard_constraints:
                    seed=_SEED_RE,
                log:
                    "logs/seeds/{seed}/shared/" + _plain[len("results/"):] + ".log",
                threads: 1
                localrule: True
                shell:
                    PD + " link --src {input:q} --out {output:q} > {log} 2>&1"

    _SEED_CONFIGS = seed_settings.module_configs(config, SEEDS, [v for v in ABLATIONS if v in TRAIN_ONLY])
    for _seed, _config in _SEED_CONFIGS.items():
        _name = f"seed_{_seed}"
        workflow.module(
            _name,
            snakefile=os.path.join(workflow.basedir, "Snakefile"),
            config=_config,
            replace_prefix={f"{d}/": f"{d}/seeds/{_seed}/" for d in ("results", "logs", "benchmarks")},
        )
        workflow.userule(rules=["*"], from_module=_name, name_modifier=f"{_name}_*",
                         exclude_rules=[*SEED_SHARED_RULES, "all", "export", "export_round"])(lambda: None)


SEED_METRICS, SEED_SHARED_METRICS = seed_metric_args()  # (seed, file) of each seed's own; no seed's


rule seed_table:
    """Every number of the summary over the seeds: mean, sd, n_seeds, the values (and which
    systems no seed changes); the teacher-score cache of every seed in one table."""
    input:
        metrics=[f for _, f in SEED_METRICS],
        shared=SEED_SHARED_METRICS,
        cache=[f"{seed_dir(s)}/teacher_cache.tsv" for s in SEEDS],
    output:
        parquet="results/seeds.parquet",
        tsv=report("results/seeds.tsv", caption="../report/seeds.rst", category="3. Evaluation"),
        cache="results/seeds_teacher_cache.tsv",
    params:
        metrics=" ".join(shlex.join(["--metrics", str(s), f]) for s, f in SEED_METRICS),
        shared=" ".join(shlex.join(["--shared", f]) for f in SEED_SHARED_METRICS),
        cache=" ".join(shlex.join(["--cache", str(s), f"{seed_dir(s)}/teacher_cache.tsv"]) for s in SEEDS),
    log:
        "logs/seeds/table.log",
    benchmark:
        "benchmarks/seeds/table.tsv"
    threads: 1
    resources:
        **resources_of("summary"),
    shell:
        PD + " seed-table {params.metrics} {params.shared} {params.cache} --out {output.parquet:q}"
        " --out-tsv {output.tsv:q} --cache-out {output.cache:q} > {log} 2>&1"


rule seed_figure:
    """Each measure per iteration with its spread over the seeds."""
    input:
        "results/seeds.parquet",
    output:
        figure("seeds", "3. Evaluation"),
    log:
        "logs/figures/seeds.log",
    threads: 1
    resources:
        **resources_of("summary"),
    shell:
        PD + " seed-figure --seeds {input:q} --out {output:q} > {log} 2>&1"
