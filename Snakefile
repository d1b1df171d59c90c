# PairDistill as a DAG. A table of contents: the rules live in rules/, the code in src/pairdistill/.
#   snakemake --cores 2                       # the embedded default (config.yaml)
#   snakemake --cores 2 --config iteration=3  # one more round; only its jobs run
#   snakemake --cores 2 ablations             # the ablation variants and their table (not in `all`)
#   snakemake --cores 2 --config seeds='[13,14,15]'  # two more seeds; results/seeds.tsv: mean ± sd
#   snakemake --report results/report.html    # the HTML report (after a run; `ablations --report` adds them)
import os

from snakemake.utils import min_version

min_version("9.0")


configfile: os.path.join(workflow.basedir, "config.yaml")


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/retriever.smk"
include: "rules/teachers.smk"
include: "rules/distill.smk"
include: "rules/evaluate.smk"
include: "rules/zeroshot.smk"
include: "rules/ablations.smk"
include: "rules/seeds.smk"
include: "rules/export.smk"
include: "rules/report.smk"


rule all:
    default_target: True  # seed and ablation modules define rules before this one
    input:
        final_outputs(),


onsuccess:
    print_summary()
