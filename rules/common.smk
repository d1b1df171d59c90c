# Config validation, paths, and the input functions every other rule file uses.
import os
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate


validate(config, schema=os.path.join(workflow.basedir, "src", "pairdistill", "config.schema.yaml"))

# Jobs run `python -m pairdistill` from src/ with the interpreter that runs Snakemake, and share
# one cache of colbert-ai's compiled extensions per checkout (built once, ~2 minutes).
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (os.path.join(workflow.basedir, "src"), os.environ.get("PYTHONPATH")) if p
)
os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(workflow.basedir, ".cache", "torch_extensions"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")  # colbert-ai's bars; our stages log progress lines
PD = f'"{sys.executable}" -m pairdistill --threads {{threads}}'

ITERATION = int(config["iteration"])
DATA_DIR = config.get("data_dir") or os.environ.get("PAIRDISTILL_DATA_DIR") or "../shared/datasets"
FIT = "fit"  # teacher model setting: fit the embedded default's own teacher
DATA = "results/data"
CORPUS, QUERIES, QRELS = f"{DATA}/corpus.parquet", f"{DATA}/queries.parquet", f"{DATA}/qrels.parquet"
THREADS = int(config["threads"])


wildcard_constraints:
    it=r"\d+",
    kind="pointwise|pairwise",


def _looks_like_path(spec):
    return spec.startswith(("/", "./", "../", "~"))


def check_inputs():
    """Stop before any job with one line when the data or a model path is missing."""
    if not os.path.isdir(DATA_DIR):
        raise WorkflowError(
            f"data directory {DATA_DIR} does not exist "
            "(set data_dir with --config data_dir=... or the PAIRDISTILL_DATA_DIR environment variable)"
        )
    dataset = os.path.join(DATA_DIR, config["dataset"])
    if not os.path.isdir(dataset):
        raise WorkflowError(f"dataset directory {dataset} does not exist (config key: dataset)")
    models = {
        "student.init": config["student"]["init"],
        "teachers.pointwise.model": config["teachers"]["pointwise"]["model"],
        "teachers.pairwise.model": config["teachers"]["pairwise"]["model"],
        "teachers.pointwise.fit.init": config["teachers"]["pointwise"]["fit"]["init"],
        "teachers.pairwise.fit.init": config["teachers"]["pairwise"]["fit"]["init"],
    }
    for key, spec in models.items():
        if _looks_like_path(spec) and not os.path.exists(os.path.expanduser(spec)):
            raise WorkflowError(f"model path {spec} does not exist (config key: {key})")


check_inputs()


def ckpt(it):
    return f"results/iter-{it}/checkpoint"


def index_dir(it):
    return f"results/iter-{it}/index"


def teacher_fitted(kind):
    return config["teachers"][kind]["model"] == FIT


def teacher_model(kind):
    """What the scoring job loads: the fitted teacher's directory, or the configured model."""
    return f"results/teachers/{kind}/model" if teacher_fitted(kind) else config["teachers"][kind]["model"]


def teacher_input(kind):
    """The fitted teacher is a DAG input; a hub id or external path is a parameter only."""
    return [f"results/teachers/{kind}/model"] if teacher_fitted(kind) else []


def search_flags(section):
    s = config[section]["search"]
    return (f"--ncells {s['ncells']} --centroid-score-threshold {s['centroid_score_threshold']} "
            f"--ndocs {s['ndocs']}")


def teacher_rerank_enabled():
    return config["evaluate"]["teacher_rerank"]["enabled"]


def metric_files():
    files = [f"results/iter-{n}/eval/metrics.parquet" for n in range(ITERATION + 1)]
    if teacher_rerank_enabled():
        files += [f"results/teachers/{kind}/rerank/metrics.parquet" for kind in ("pointwise", "pairwise")]
    return files


def final_outputs():
    return [*metric_files(), "results/summary.parquet"]


def print_summary():
    path = Path("results/summary.tsv")
    if path.exists():
        print("\nPairDistill summary (results/summary.parquet):\n" + path.read_text())
