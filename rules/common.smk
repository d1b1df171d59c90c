# Config validation, paths, and the input functions every other rule file uses.
import json
import os
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.io import is_flagged, local
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
# The interpreter reaches jobs through the environment (exported to cluster jobs too), not the
# command text: a moved checkout or venv must not change every job's command and rerun it all.
os.environ["PAIRDISTILL_PYTHON"] = sys.executable
PD = '"$PAIRDISTILL_PYTHON" -m pairdistill --threads {threads}'
sys.path.insert(0, os.path.join(workflow.basedir, "src"))
from pairdistill.data import input_files  # noqa: E402  (after the path is set)
from pairdistill import students  # noqa: E402
from pairdistill.errors import SettingError  # noqa: E402
from pairdistill.loaders import lotte as lotte_loader  # noqa: E402
from pairdistill.shards import shard_names  # noqa: E402
from pairdistill import seeds as seed_settings  # noqa: E402

try:  # empty, a duplicate, not an integer, not starting with `seed`: one line naming seeds
    SEEDS = seed_settings.check(config)
except ValueError as exc:
    raise WorkflowError(str(exc)) from None
# a non-primary seed's module (rules/seeds.smk): the primary's results prefix, whose teacher
# scores its scoring jobs reuse; None in the run itself
SEED_MODULE = config.get(seed_settings.MODULE_KEY)


def seed_dir(seed):
    """A seed's results directory: results for the primary, results/seeds/<s> for the others."""
    return seed_settings.prefix(int(seed), SEEDS[0]).rstrip("/")

def resolve_source_run():
    """`{source_run}` in student.init and teachers.<kind>.model stands for config `source_run`, a
    finished run's results directory (absolute, or relative to the working directory): a run that
    starts from another run's retriever and teachers (configs/adapt-cranfield.yaml) names the run
    once. The paths become absolute, so that they are checked at start-up like any model path."""
    keys = [("student", "init"), ("teachers", "pointwise", "model"), ("teachers", "pairwise", "model")]
    source = config.get("source_run")
    root = os.path.abspath(os.path.expanduser(str(source))) if source else None
    if root and not os.path.isdir(root):
        raise WorkflowError(f"source_run: {source} is not a directory (a finished run's results directory)")
    for key in keys:
        node = config
        for part in key[:-1]:
            node = node[part]
        value = node[key[-1]]
        if "{source_run}" not in value:
            continue
        if root is None:
            raise WorkflowError(f"{'.'.join(key)}: {value!r} names {{source_run}}, but source_run is not set "
                                "(--config source_run=<a finished run's results directory>)")
        node[key[-1]] = os.path.normpath(value.replace("{source_run}", root))


resolve_source_run()

ITERATION = int(config["iteration"])
DATA_DIR = config.get("data_dir") or os.environ.get("PAIRDISTILL_DATA_DIR") or "../shared/datasets"
FIT = "fit"  # teacher model setting: fit the embedded default's own teacher
DATA = "results/data"
CORPUS, QUERIES, QRELS = f"{DATA}/corpus.parquet", f"{DATA}/queries.parquet", f"{DATA}/qrels.parquet"
THREADS = int(config["threads"])
SHARDS = shard_names(int(config["shards"]))
EVAL_SPLITS = [config["eval_split"]] if isinstance(config["eval_split"], str) else list(config["eval_split"])
PREPARED_SPLITS = sorted({config["train_split"], *EVAL_SPLITS})


def collection_splits():
    """The collection's own split names where they can be known before any job (BEIR: its qrels
    files; MS MARCO: its queries files)."""
    if config["format"] == "msmarco":
        return list((config.get("files") or {}).get("queries", {}))
    qrels = Path(DATA_DIR) / config["dataset"] / "qrels"
    return [p.stem for p in qrels.glob("*.tsv")] if qrels.is_dir() else []


# Derived query splits (config query_splits; pairdistill.query_splits): partitions of a split of the
# collection that train_split and eval_split may name. prepare reads their sources (LOADED_SPLITS).
from pairdistill import query_splits as derived_splits  # noqa: E402

try:
    QUERY_SPLITS = derived_splits.check(config.get("query_splits"), collection_splits())
except SettingError as exc:
    raise WorkflowError(str(exc)) from None
LOADED_SPLITS = derived_splits.loaded_splits(PREPARED_SPLITS, QUERY_SPLITS) if QUERY_SPLITS else PREPARED_SPLITS


def source_split(split):
    """The collection's split a (possibly derived) split's queries come from."""
    return QUERY_SPLITS[split]["from"] if split in QUERY_SPLITS else split
BEIR = config["beir_eval"]
LOTTE, QA = config["lotte_eval"], config["qa_eval"]  # rules/zeroshot.smk; no topic, no dataset: no job
# a sharded stage's shard files, and the schema of its gathered file
SHARDED = {"train_topk": "run", "pointwise": "pointwise", "pairs": "pairs", "pairwise": "pairwise"}


wildcard_constraints:
    it=r"\d+",
    kind="pointwise|pairwise",
    shard=r"\d+-of-\d+",
    stage="|".join(SHARDED),
    split=r"[^/]+",
    beir=r"[^/]+",
    lotte=r"[^/]+",
    query_set="|".join(lotte_loader.QUERY_SETS),
    qa_passages=r"[^/]+",
    qa=r"[^/]+",


def resources_of(rule):
    """A rule's portable resources (mem_mb, runtime, gpu) from config `resources`: its own entry
    over `default`."""
    return {**config["resources"]["default"], **config["resources"].get(rule, {})}


def _looks_like_path(spec):
    return spec.startswith(("/", "./", "../", "~"))


def check_inputs():
    """Stop before any job with one line when the data or a model path is missing."""
    if not os.path.isdir(DATA_DIR):
        raise WorkflowError(
            f"data directory {DATA_DIR} does not exist "
            "(set data_dir with --config data_dir=... or the PAIRDISTILL_DATA_DIR environment variable)"
        )
    for name, key in [(config["dataset"], "dataset")] + [(d, "beir_eval.datasets") for d in BEIR["datasets"]]:
        dataset = os.path.join(DATA_DIR, name)
        if not os.path.isdir(dataset):
            raise WorkflowError(f"dataset directory {dataset} does not exist (config key: {key})")
    try:  # the loader's own checks of `format` and `files` (every split needs its queries file)
        input_files(DATA_DIR, config["dataset"], config["format"], config.get("files"), LOADED_SPLITS)
    except ValueError as exc:
        raise WorkflowError(str(exc)) from None
    if config["format"] == "msmarco":
        for split in map(source_split, EVAL_SPLITS):  # the loader allows unlabelled splits; evaluation needs qrels
            if split not in config["files"].get("qrels", {}):
                raise WorkflowError(f"evaluation split {split!r} has no qrels file (config key: files.qrels.{split})")
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


def data_path(path):
    """A path named in lotte_eval or qa_eval: relative to the data directory unless absolute."""
    return os.path.join(DATA_DIR, os.path.expanduser(path))


LOTTE_ROOT = data_path(LOTTE["root"])


def lotte_files(topic):
    return lotte_loader.input_files(LOTTE_ROOT, topic, LOTTE["split"], LOTTE["query_sets"])


def qa_passages_file(name):
    return data_path(QA["passages"][name])


def qa_questions_file(name):
    return data_path(QA["datasets"][name]["questions"])


def check_zero_shot_inputs():
    """Stop before any job with one line naming the LoTTE or QA file that is missing, and its key."""
    if LOTTE["topics"] and not os.path.isdir(LOTTE_ROOT):
        raise WorkflowError(f"LoTTE directory {LOTTE_ROOT} does not exist (config key: lotte_eval.root)")
    for topic in LOTTE["topics"]:
        for path in lotte_files(topic):
            if not os.path.isfile(path):
                raise WorkflowError(f"LoTTE file {path} does not exist (config key: lotte_eval.topics: {topic})")
    for name, spec in QA["datasets"].items():
        if spec["passages"] not in QA["passages"]:
            raise WorkflowError(f"qa_eval.datasets.{name}.passages: {spec['passages']!r} is not a collection of "
                                f"qa_eval.passages ({', '.join(QA['passages']) or 'none'})")
        for path, key in ((qa_passages_file(spec["passages"]), f"qa_eval.passages.{spec['passages']}"),
                          (qa_questions_file(name), f"qa_eval.datasets.{name}.questions")):
            if not os.path.isfile(path):
                raise WorkflowError(f"QA file {path} does not exist (config key: {key})")


check_zero_shot_inputs()


def beir_query_maxlen(dataset):
    """Query tokens when a BEIR collection is searched: beir_eval.query_maxlen's entry, else the student's."""
    return (BEIR.get("query_maxlen") or {}).get(dataset, config["student"]["query_maxlen"])


def ckpt(it):
    return f"results/iter-{it}/checkpoint"


def index_dir(it):
    return f"results/iter-{it}/index"


def teacher_fitted(kind):
    return config["teachers"][kind]["model"] == FIT


def rebased(kind):
    """teachers.<kind>.rebase: the model path is another run's fitted fusion teacher, re-based on
    this run's corpus by rule rebase_teacher into results/teachers/<kind>/model."""
    return bool(config["teachers"][kind].get("rebase", False))


def rebase_reuse(kind):
    """The re-based teacher whose corpus embeddings re-basing ``kind`` may reuse: the pointwise
    one, for the pairwise teacher, when both are re-based (a fusion-pairwise teacher holds its
    pointwise teacher's bi-encoders); rebase_fusion checks that they match before using them."""
    return ["results/teachers/pointwise/model"] if kind == "pairwise" and rebased("pointwise") else []


FIT_METHODS = {"pointwise": ("cross-encoder", "fusion"), "pairwise": ("bert-pairwise", "fusion-pairwise")}
FAMILIES = {"pointwise": ("auto", "cross-encoder", "monot5", "fusion", "instruct-pointwise"),
            "pairwise": ("auto", "bert-pairwise", "duot5", "fusion-pairwise", "instruct-pairwise")}
INSTRUCT = {"pointwise": "instruct-pointwise", "pairwise": "instruct-pairwise"}  # prompted LMs (flan-t5-xl)
FUSION_DEFAULTS = {"heldout": 0.25, "candidates": 100, "scale": 20.0, "depth": 30}
PLAIN_FUSION = "results/teachers/plain_fusion/model"


def fit_method(kind):
    return config["teachers"][kind]["fit"].get("method", FIT_METHODS[kind][0])


def kinds_fitted_as(*methods):
    """A wildcard pattern of the teacher kinds whose `model: fit` is one of ``methods``."""
    kinds = [k for k in ("pointwise", "pairwise") if fit_method(k) in methods and not rebased(k)]
    return "|".join(kinds) if kinds else "(?!)"


def fusion_fitted():
    return teacher_fitted("pointwise") and fit_method("pointwise") == "fusion"


def fusion_settings(kind):
    own = ("pair_features",) if kind == "pairwise" else ()  # only when set: the default's params stay as they were
    return {**FUSION_DEFAULTS, **{k: v for k, v in config["teachers"][kind]["fit"].items() if k in FUSION_DEFAULTS or k in own}}


def check_teachers():
    """One line naming the key when a teacher setting cannot score its kind."""
    for kind, other in (("pointwise", "pairwise"), ("pairwise", "pointwise")):
        t = config["teachers"][kind]
        if t["family"] not in FAMILIES[kind]:
            what = f"a {other} family" if t["family"] in FAMILIES[other] else "unknown"
            raise WorkflowError(f"teachers.{kind}.family: {t['family']!r} cannot score {kind} ({what}); "
                                f"expected one of {', '.join(FAMILIES[kind])}")
        method = t["fit"].get("method", FIT_METHODS[kind][0])
        if method not in FIT_METHODS[kind]:
            what = f"fits a {other} teacher" if method in FIT_METHODS[other] else "unknown"
            raise WorkflowError(f"teachers.{kind}.fit.method: {method!r} cannot fit a {kind} teacher ({what}); "
                                f"expected one of {', '.join(FIT_METHODS[kind])}")
    pw = config["teachers"]["pairwise"]
    if pw["model"] == FIT and fit_method("pairwise") == "fusion-pairwise" and not fusion_fitted():
        raise WorkflowError("teachers.pairwise.fit.method: fusion-pairwise builds on the fusion pointwise teacher; "
                            "set teachers.pointwise.model: fit and teachers.pointwise.fit.method: fusion")
    from pairdistill.errors import SettingError

    for kind in ("pointwise", "pairwise"):
        if rebased(kind):
            check_rebase(kind)
        if instructed(kind) and teacher_fitted(kind):
            raise WorkflowError(f"teachers.{kind}.family: {INSTRUCT[kind]} prompts a language model; set "
                                f"teachers.{kind}.model to a local path or a cached hub id (e.g. google/flan-t5-xl), not fit")
        if instructed(kind):
            try:
                instruct_settings(kind)
            except SettingError as exc:  # a template without its fields, a bad label list: names the key
                raise WorkflowError(str(exc)) from None


def check_rebase(kind):
    """teachers.<kind>.rebase needs a fitted fusion teacher directory of the kind, given by path."""
    t = config["teachers"][kind]
    key = f"teachers.{kind}.rebase"
    if t["model"] == FIT:
        raise WorkflowError(f"{key}: re-bases a fitted fusion teacher of another run given by path "
                            f"(teachers.{kind}.model); model: fit is fitted on this run's corpus already")
    meta_file = Path(os.path.expanduser(t["model"])) / "pairdistill_teacher.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    family = {"pointwise": "fusion", "pairwise": "fusion-pairwise"}[kind]
    if meta.get("family") != family:
        found = f"family {meta.get('family')!r}" if meta else "no pairdistill_teacher.json"
        raise WorkflowError(f"{key}: {t['model']} is not a fitted {family} teacher directory ({found})")
    if t["family"] not in ("auto", family):
        raise WorkflowError(f"{key}: a re-based teacher is a {family} teacher; teachers.{kind}.family is "
                            f"{t['family']!r} (set auto or {family})")


def instructed(kind):
    return config["teachers"][kind]["family"] == INSTRUCT[kind]


def instruct_settings(kind):
    """An instruction teacher's prompt and label words, defaults filled in and checked."""
    from pairdistill.teachers.instruct import settings

    t = config["teachers"][kind]
    return settings(kind, t.get("prompt"), t.get("labels"))


def instruct_args(kind):
    """instruct_flags' text for a rule whose kind is a wildcard: shell-quoted, or nothing."""
    import shlex

    if not instructed(kind):
        return ""
    own = instruct_settings(kind)
    return shlex.join(["--prompt", own["prompt"], "--labels", *own["labels"]])


def instruct_flags(kind):
    """The scoring command's --prompt and --labels for an instruction teacher (from its params.t), else
    nothing: the other teachers' commands and params stay as they were, so none of their jobs reruns."""
    return " --prompt {params.t[prompt]:q} --labels {params.t[labels]:q}" if instructed(kind) else ""


check_teachers()


# Training: settings with their defaults (keys a config may leave out), the ones that change how a
# job runs but not what it writes (resources: changing them reruns nothing and a saved state is
# resumed), and the start-up checks of what is knowable before any job runs.
TRAIN_DEFAULTS = {"contrastive_negatives": "teacher", "mined_negatives": None, "mined_per_query": 8,
                  "precision": "auto", "micro_batch": None, "grad_checkpointing": False}
TRAIN_SPEED = ("save_every", "micro_batch", "grad_checkpointing")


def train_settings(t):
    """The train settings a training job's results depend on (its params), defaults filled in."""
    return {k: v for k, v in {**TRAIN_DEFAULTS, **t}.items() if k not in TRAIN_SPEED}


def train_speed(t):
    """micro_batch (0: the whole batch), grad_checkpointing and save_every, as resources."""
    t = {**TRAIN_DEFAULTS, **t}
    return {"save_every": t["save_every"], "micro_batch": t["micro_batch"] or 0,
            "grad_checkpointing": int(bool(t["grad_checkpointing"]))}


def mined_negatives_input():
    t = {**TRAIN_DEFAULTS, **config["train"]}
    return [t["mined_negatives"]] if t["contrastive_negatives"] == "mined" and t["mined_negatives"] else []


def visible_gpus():
    """GPUs this machine shows (CUDA_VISIBLE_DEVICES when set, else CUDA's count); None when it
    shows none, since jobs may then run elsewhere (a cluster) and nothing can be known here."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None and listed.strip() and listed.strip() != "-1":
        return len([x for x in listed.split(",") if x.strip()])
    import torch

    return torch.cuda.device_count() or None


def check_training(t, gpus, key="train"):
    """One line naming the key for a training setting that cannot work with the job's resources."""
    t = {**TRAIN_DEFAULTS, **t}
    if t["micro_batch"] is not None and t["batch_size"] % t["micro_batch"]:
        raise WorkflowError(f"{key}.micro_batch: {t['micro_batch']} does not divide {key}.batch_size "
                            f"{t['batch_size']}")
    if gpus > 1 and t["batch_size"] % gpus:
        raise WorkflowError(f"{key}.batch_size: {t['batch_size']} queries do not split evenly over "
                            f"resources.train.gpu {gpus} processes")
    if gpus > 1 and t["micro_batch"] is not None and (t["batch_size"] // gpus) % t["micro_batch"]:
        raise WorkflowError(f"{key}.micro_batch: {t['micro_batch']} does not divide the "
                            f"{t['batch_size'] // gpus} queries of each of resources.train.gpu {gpus} processes")
    if t["contrastive_negatives"] == "mined" and not t["mined_negatives"]:
        raise WorkflowError(f"{key}.mined_negatives: contrastive_negatives mined needs a negatives file")
    if t["contrastive_negatives"] == "mined" and not os.path.exists(os.path.expanduser(t["mined_negatives"])):
        raise WorkflowError(f"{key}.mined_negatives: {t['mined_negatives']} does not exist")
    if t["precision"] == "fp16" and gpus == 0:
        raise WorkflowError(f"{key}.precision: fp16 needs a GPU, and resources.train.gpu is 0 "
                            "(use fp32 or bf16, or give training a GPU)")
    if gpus > 1 or (gpus and t["precision"] == "bf16"):
        seen = visible_gpus()
        if seen is not None and gpus > seen:
            raise WorkflowError(f"resources.train.gpu: {gpus} GPUs asked for, but this machine shows {seen}")
        if seen is not None and t["precision"] == "bf16":
            import torch

            if torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
                raise WorkflowError(f"{key}.precision: bf16 is not supported by {torch.cuda.get_device_name(0)} "
                                    "(use fp16 or fp32)")
    for kind in ("pointwise", "pairwise"):
        p = config["teachers"][kind].get("precision", "fp32")
        if p == "fp16" and not resources_of(kind).get("gpu"):
            raise WorkflowError(f"teachers.{kind}.precision: fp16 needs a GPU, and resources.{kind}.gpu is 0")


check_training(config["train"], int(resources_of("train").get("gpu", 0)))


# The student kind, student.arch (colbert unless set; pairdistill.students). A DPR student's
# settings reach init_checkpoint, index and train as params and flags that only a DPR run has, so
# a ColBERT run's params and commands, and a finished run's record of them, stay as they were.
try:
    STUDENT_ARCH = students.check_config(config)
except SettingError as exc:
    raise WorkflowError(str(exc)) from None


def student_params(step):
    """The DPR settings of ``step`` (init, index or train) as params; none for ColBERT."""
    if STUDENT_ARCH != "dpr":
        return {}
    if step == "init":
        s = students.DPRSettings.from_config(config["student"])
        return {"dpr": {"shared": s.shared, "pooling": s.pooling, "score": s.score, "scale": s.scale}}
    if step == "index":
        return {"dpr_index": students.index_settings(config["index"])}
    return {"arch": STUDENT_ARCH}


def student_flags(step):
    """The command-line flags of :func:`student_params` ("" for ColBERT)."""
    if STUDENT_ARCH != "dpr":
        return ""
    return {"init": " --arch dpr --dpr-shared {params.dpr[shared]} --dpr-pooling {params.dpr[pooling]}"
                    " --dpr-score {params.dpr[score]} --dpr-scale {params.dpr[scale]}",
            "index": " --dpr-index {params.dpr_index[type]} --dpr-nlist {params.dpr_index[nlist]}"
                     " --dpr-nprobe {params.dpr_index[nprobe]}",
            "train": " --arch {params.arch}"}[step]


def teacher_model(kind):
    """What the scoring job loads: the fitted (or re-based) teacher's directory, or the configured model."""
    own = teacher_fitted(kind) or rebased(kind)
    return f"results/teachers/{kind}/model" if own else config["teachers"][kind]["model"]


def teacher_model_param(kind=None):
    """A scoring job's --model: its teacher input's path when the teacher is this run's (fitted
    or re-based), else the configured model. Read from the input, the path moves with the
    workflow when an ablation variant includes it as a module (params are not moved); for this
    workflow the value is teacher_model's, so finished jobs keep their params. ``kind`` None: the
    job's {kind} wildcard."""
    return lambda w, input: input.teacher[0] if input.teacher else teacher_model(kind or w.kind)


def teacher_input(kind):
    """The fitted (or re-based) teacher is a DAG input; a hub id or external path is a parameter only."""
    return [f"results/teachers/{kind}/model"] if teacher_fitted(kind) or rebased(kind) else []


def teacher_settings(kind, *keys):
    """The teacher settings a job's results depend on, as its params: a change reruns it."""
    defaults = {"precision": "fp32"}
    out = {k: config["teachers"][kind].get(k, defaults.get(k)) for k in keys}
    if instructed(kind):  # its prompt and label words: a changed prompt rescores
        out.update(instruct_settings(kind))
    return out


def speed_settings(kind):
    """Batch and part sizes change how fast a scoring job runs, not what it writes (beyond float
    rounding), so they are resources, which Snakemake does not compare between runs: lowering a
    batch size after an out-of-memory kill reruns nothing, and finished parts are kept."""
    return {"batch_size": config["teachers"][kind]["batch_size"], "part_rows": config["scoring"]["part_rows"]}


def search_flags(section):
    s = config[section]["search"]
    return (f"--ncells {s['ncells']} --centroid-score-threshold {s['centroid_score_threshold']} "
            f"--ndocs {s['ndocs']}")


def teacher_rerank_enabled():
    return config["evaluate"]["teacher_rerank"]["enabled"]


def pair_accuracy_depth():
    """List depth of Table 5's judged pairs: the training top-k unless set."""
    return config["evaluate"]["teacher_rerank"].get("pair_accuracy_depth") or config["retrieve"]["top_k"]


def measures(split):
    return config["evaluate"]["measures_by_split"].get(split, config["evaluate"]["measures"])


def shard_files(it, stage):
    return [f"results/iter-{it}/{stage}/shard-{s}.parquet" for s in SHARDS]


def score_cache(stage):
    """An earlier iteration's scores of the same shard: what the same teacher scored is reused. In
    a seed's module also the primary seed's files of the same shard up to this iteration (their
    paths are the run's own, flagged local so the module's prefix leaves them as they are)."""
    def files(w):
        own = [f"results/iter-{n}/{stage}/shard-{w.shard}.parquet" for n in range(1, int(w.it))]
        primary = [local(f"{p}iter-{n}/{stage}/shard-{w.shard}.parquet")
                   for p in (SEED_MODULE or {}).get("cache", []) for n in range(1, int(w.it) + 1)]
        return own + primary
    return files


def metric_files():
    files = [f"results/iter-{n}/eval/{split}/metrics.parquet" for n in range(ITERATION + 1) for split in EVAL_SPLITS]
    files += [f"results/iter-{n}/beir/{d}/eval/metrics.parquet" for n in range(ITERATION + 1) for d in BEIR["datasets"]]
    files += [f"results/iter-{n}/lotte/{t}/eval/{s}/metrics.parquet" for n in range(ITERATION + 1)
              for t in LOTTE["topics"] for s in LOTTE["query_sets"]]
    files += [f"results/iter-{n}/qa/{spec['passages']}/eval/{d}/metrics.parquet" for n in range(ITERATION + 1)
              for d, spec in QA["datasets"].items()]
    if teacher_rerank_enabled():
        files += [f"results/teachers/{kind}/rerank/metrics.parquet" for kind in ("pointwise", "pairwise")]
        files += ["results/teachers/pair_accuracy/metrics.parquet"]
        if fusion_fitted():
            files += ["results/teachers/plain_fusion/rerank/metrics.parquet", "results/baselines/metrics.parquet"]
        elif rebased("pointwise"):  # BM25, bi-encoder and teacher over this corpus (no plain fusion here)
            files += ["results/baselines/metrics.parquet"]
    return files


def seed_metric_args():
    """(seed, metrics file) of every seed's own numbers, and the metrics files no seed changes."""
    files = metric_files()
    shared = [f for f in files if f.startswith("results/baselines/")]
    own = [f for f in files if f not in shared]
    pairs = [(s, f if s == SEEDS[0] else f"{seed_dir(s)}/{f[len('results/'):]}") for s in SEEDS for f in own]
    return pairs, shared


def teacher_score_files():
    return [f"results/iter-{n}/{stage}.parquet" for n in range(1, ITERATION + 1) for stage in ("pointwise", "pairwise")]


def gathered_files():
    """Every sharded stage's gathered file of every round (training reads two of them; the top-k
    and the sampled pairs are gathered for inspection)."""
    return [f"results/iter-{n}/{stage}.parquet" for n in range(1, ITERATION + 1) for stage in SHARDED]


def final_outputs():
    # the report's figures (rules/report.smk; a few seconds) once a round has trained
    figures = ["results/figures/metrics.png"] if ITERATION >= 1 else []
    # several seeds: every seed's numbers as mean ± sd (rules/seeds.smk), and their figure
    seeds = ["results/seeds.parquet", "results/seeds.tsv", "results/figures/seeds.png"] if len(SEEDS) > 1 else []
    return [*metric_files(), *gathered_files(), "results/summary.parquet", "results/teacher_cache.tsv", *figures,
            *seeds]


def print_summary():
    path, seeds = Path("results/summary.tsv"), Path("results/seeds.parquet")
    if len(SEEDS) > 1 and seeds.exists():
        import pandas as pd

        try:
            table = seed_settings.wide(pd.read_parquet(seeds)).to_string(index=False)
        except Exception as exc:  # e.g. --touch over stand-ins: the run itself is fine
            print(f"(results/seeds.parquet not readable: {exc})")
            return
        print(f"\nPairDistill over seeds {', '.join(map(str, SEEDS))}: mean ± sd (results/seeds.tsv):\n" + table)
        cache = Path("results/seeds_teacher_cache.tsv")
        if cache.exists():
            print("Teacher scores reused, per seed (earlier rounds and the primary seed; results/seeds_teacher_cache.tsv):\n"
                  + cache.read_text())
        return
    if path.exists():
        print("\nPairDistill summary (results/summary.parquet):\n" + path.read_text())
    cache = Path("results/teacher_cache.tsv")
    if cache.exists() and len(cache.read_text().splitlines()) > 1:
        print("Teacher scores reused from earlier iterations (results/teacher_cache.tsv):\n" + cache.read_text())


def figure(name, category, subcategory=None):
    return report(f"results/figures/{name}.png", caption=f"../report/{name}.rst", category=category,
                  subcategory=subcategory)


# inference.*: the backend of every encoding and teacher score made without gradients (index,
# retrieve, evaluate, the fusion teachers' embeddings, pointwise / pairwise scoring, reranking,
# pair accuracy; training stays torch). Under the default (torch, none, fp32) a rule gets neither
# params nor flags, so the default's commands are as they were and no finished job reruns; any
# other setting is a param (it changes outputs) and its --inference-* flags. instruct-* teachers
# (prompted LMs) always run on torch: their rules get neither, and they are not checked here.
# Exported models are built once per weights per checkout, under .cache/inference (git-ignored).
os.environ.setdefault("PAIRDISTILL_INFERENCE_CACHE", os.path.join(workflow.basedir, ".cache", "inference"))
INFERENCE_DEFAULTS = {"backend": "torch", "quantize": "none", "precision": "fp32"}
INFERENCE = {**INFERENCE_DEFAULTS, **(config.get("inference") or {})}


def inference_args(kind=None):
    """The --inference-* flags that differ from the default ('' for an instruct-* teacher's kind)."""
    if kind and instructed(kind):
        return ""
    return " ".join(f"--inference-{k} {v}" for k, v in INFERENCE.items() if v != INFERENCE_DEFAULTS[k])


def inference_params(kind=None):
    """A rule's inference param: none under the default (or for an instruct-* teacher's kind);
    ``kind="{kind}"``: the rule's kind is its wildcard."""
    if INFERENCE == INFERENCE_DEFAULTS or (kind in INSTRUCT and instructed(kind)):
        return {}
    return {"inference": (lambda w: inference_args(w.kind)) if kind == "{kind}" else inference_args(kind)}


def inference_flags(kind=None):
    """The command's --inference-* flags (from params.inference), or nothing (see inference_params)."""
    return " {params.inference}" if inference_params(kind) else ""


def inference_families():
    """The families this run encodes or scores with: the student's arch, the pointwise and pairwise
    teachers' families (auto: the fit method's, or detected from the model) and, when fitted or
    re-based, the fusion teachers' bi-encoders. instruct-* left out: they run on torch."""
    out = {f"student ({STUDENT_ARCH})": STUDENT_ARCH}
    for kind in ("pointwise", "pairwise"):
        if instructed(kind):
            continue
        t = config["teachers"][kind]
        family = t["family"]
        if family == "auto" and t["model"] == FIT:
            family = fit_method(kind)
        elif family == "auto":
            try:
                from pairdistill.teachers.registry import detect_family

                family = detect_family(os.path.expanduser(t["model"]), kind)
            except Exception:  # a missing model is check_inputs' to report
                family = {"pointwise": "cross-encoder", "pairwise": "bert-pairwise"}[kind]
        out[f"teachers.{kind}"] = family
        if family.startswith("fusion"):
            out[f"teachers.{kind} (its bi-encoders)"] = "biencoder"
    return out


def check_inference():
    """One line naming inference.backend / quantize / precision when a family of the run cannot
    honour them on this machine (an unknown or uninstalled backend, int8 on a GPU, ...)."""
    if INFERENCE == INFERENCE_DEFAULTS:
        return
    device = "cuda" if visible_gpus() else "cpu"
    if INFERENCE == {**INFERENCE_DEFAULTS, "backend": "auto"}:
        # the config's default: openvino fp32 on a CPU, torch on a GPU; checked without importing torch
        import importlib.util

        if device == "cpu" and importlib.util.find_spec("openvino") is None:
            print("inference.backend auto: openvino is not installed (the extra `fast`), so encodings and "
                  "teacher scores run on eager torch", file=sys.stderr)
        return
    from pairdistill import inference

    for who, family in inference_families().items():
        try:
            inference.check_backend(INFERENCE["backend"], INFERENCE["quantize"], family, device,
                                    INFERENCE["precision"])
        except SettingError as exc:
            raise WorkflowError(f"{exc} (for {who}: {family})") from None


check_inference()
