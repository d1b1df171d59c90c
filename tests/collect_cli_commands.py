"""Collect every ``pairdistill`` command the workflow plans (dry runs of several configs) into
tests/data/cli_commands.json, with the stage call today's command line makes of each: what
tests/test_cli.py holds the command line to. Rerun by hand (``python tests/collect_cli_commands.py``)
when a rule's command changes; it takes a few minutes."""

from __future__ import annotations

import json
import re
import shlex
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from workflow import DATA_DIR, REPO, snakemake, write_config  # noqa: E402

OUT = Path(__file__).parent / "data" / "cli_commands.json"
COMMAND = re.compile(r'-m pairdistill --threads \d+ (.*?) (?:>|2>&1)', re.S)


def _plans(root: Path):
    from test_domain_adaptation import make_source_run
    from test_lotte import write_topic
    from test_paper_config import PAPER, make_standins
    from test_qa import PASSAGES, QUESTIONS
    from test_zeroshot_workflow import _sections

    for topic in ("pets", "pooled"):
        write_topic(root / "lotte", topic)
    (root / "dpr").mkdir()
    (root / "dpr" / "psgs.tsv").write_text(PASSAGES)
    (root / "dpr" / "nq.qa.csv").write_text(QUESTIONS)
    (root / "dpr" / "squad.qa.csv").write_text(QUESTIONS)
    data = {"data_dir": str(DATA_DIR)}
    yield "default", (), data, ()
    yield "export", (), data, ("export",)  # the default's round as a dataset (not in `all`)
    yield "classic-teachers", (), {**data, "teachers": {"pointwise": {"fit": {"method": "cross-encoder"}},
                                                        "pairwise": {"fit": {"method": "bert-pairwise"}}}}, ()
    yield "dpr", (REPO / "configs" / "dpr-scifact.yaml",), data, ()
    yield "zero-shot", (), {**data, **_sections(root)}, ()
    yield "paper-ablations", (PAPER,), {"data_dir": str(make_standins(root / "standins")),
                                        "ablations": {"run": ["no-pair"]}}, ("ablations",)
    yield "adapt-cranfield", (REPO / "configs" / "adapt-cranfield.yaml",), \
        {**data, "source_run": str(make_source_run(root / "source"))}, ()


# commands no planned job of those configs has: an instruction teacher's prompt and labels, the
# ablations' links, a training job's non-default settings, and the stages people run by hand
EXTRA = [
    ["pointwise", "--topk", "t", "--corpus", "c", "--queries", "q", "--out", "o", "--split", "test", "--qrels", "r",
     "--model", "m", "--family", "instruct-pointwise", "--max-length", "64", "--batch-size", "8",
     "--prompt", "Q: {query}\nP: {passage}", "--labels", " Yes", " No", "--cache", "--add-positives", "false"],
    ["link", "--src", "a", "--out", "b"],
    ["train", "--checkpoint", "c", "--corpus", "c", "--queries", "q", "--qrels", "r", "--pointwise", "p",
     "--pairwise", "p", "--out", "o", "--loss-out", "l", "--split", "s", "--nway", "4", "--batch-size", "2",
     "--lr", "1e-5", "--query-maxlen", "8", "--doc-maxlen", "8", "--micro-batch", "2", "--processes", "2",
     "--contrastive-negatives", "mined", "--mined-negatives", "null", "--max-steps", "all", "--arch", "dpr",
     "--state-dir", "s", "--use-labels", "no"],
    ["selfcheck", "--device", "cpu", "--small", "--parts", "train", "colbert", "--out", "x.json"],
    ["selfcheck"],
    ["benchmarks", "--dir", "d"],
    ["benchmarks"],
]


def collect() -> list[dict]:
    commands, seen = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, configs, overlay, targets in _plans(root):
            work = root / "plans" / name
            work.mkdir(parents=True)
            cfg = write_config(work / "overlay.yaml", overlay)
            out = snakemake(work, "-n", "-p", "-F", *targets, configfiles=(*configs, cfg)).stdout
            for m in COMMAND.finditer(out):
                argv = shlex.split(m.group(1))
                shape = (argv[0], *(w for w in argv if w.startswith("--")))  # the stage and its flags
                if seen.get(shape, 0) < 2:  # the jobs of one rule differ in paths and numbers only
                    seen[shape] = seen.get(shape, 0) + 1
                    commands.append({"plan": name, "argv": argv})
    return commands


if __name__ == "__main__":
    from cli_calls import calls_of

    rows = collect() + [{"plan": "by hand", "argv": argv} for argv in EXTRA]
    from pairdistill import cli

    for row in rows:
        row["calls"] = calls_of(row["argv"])  # the stage calls
        a = cli.build_parser().parse_args(["--threads", "2", *row["argv"]])  # the job log's first line
        row["settings"] = json.loads(json.dumps(cli._settings(a), default=str))
    OUT.write_text(json.dumps(rows, indent=1) + "\n")
    print(f"{len(rows)} commands -> {OUT}")
