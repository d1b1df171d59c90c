"""The command line is built from the stage functions: every command the rules run parses into
the same stage calls (and job-log settings) as the hand-written parser it replaced, and a new
parameter of a stage function is a new flag with no other code."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

import pytest
from cli_calls import calls_of

from pairdistill import cli

DATA = Path(__file__).parent / "data" / "cli_commands.json"
RULES = Path(__file__).resolve().parents[1] / "rules"
COMMANDS = json.loads(DATA.read_text())

# parameters renamed to their flag's name when the command line was built from the signatures
RENAMED = {
    "stages.train": {"checkpoint_in": "checkpoint", "checkpoint_out": "out"},
    "stages.retrieve": {"index_dir": "index"},
    "stages.evaluate_retriever": {"index_dir": "index"},
    "stages.evaluate_qa": {"index_dir": "index", "ks": "k"},
    "stages.gather": {"shard_paths": "shards", "name": "schema"},
    "stages.corpus_baselines": {"teacher_dir": "teacher"},
    "stages.pair_accuracy": {f"pairwise_{k}": k for k in ("model", "family", "max_length", "precision", "prompt",
                                                           "labels")},
    "figures.draw_all": {"losses_": "losses", "benchmarks_dir": "benchmarks"},
    "bench.benchmark_files.report": {"directory": "dir"},
}

# flags the hand-written parser lacked (the function had the parameter)
NEW_FLAGS = {"selfcheck": {"work"}}
# settings added since the commands were recorded, absent from the default's commands: their flags
# (None when not given) and the stage's parameter ({} when none of its keys is given) are dropped
INFERENCE_STAGES = ("index", "retrieve", "evaluate", "evaluate-qa", "fit-fusion", "rebase-fusion", "pointwise",
                    "pairwise", "rerank-pointwise", "rerank-pairwise", "pair-accuracy", "corpus-baselines")
for _stage in INFERENCE_STAGES:
    NEW_FLAGS.setdefault(_stage, set()).update({"inference_backend", "inference_quantize", "inference_precision"})
NEW_PARAMS = {"inference": {}}


def _without_new_params(calls: list[dict]) -> list[dict]:
    return [{"fn": c["fn"], "kwargs": {k: v for k, v in c["kwargs"].items()
                                       if not (k in NEW_PARAMS and v == NEW_PARAMS[k])}} for c in calls]


def _renamed(calls: list[dict]) -> list[dict]:
    names = {c["fn"]: RENAMED.get(c["fn"], {}) for c in calls}
    return [{"fn": c["fn"], "kwargs": {names[c["fn"]].get(k, k): v for k, v in c["kwargs"].items()}} for c in calls]


@pytest.mark.parametrize("row", COMMANDS, ids=[f"{r['plan']}:{r['argv'][0]}:{i}" for i, r in enumerate(COMMANDS)])
def test_every_planned_command_makes_the_same_calls(row):
    assert _without_new_params(calls_of(row["argv"])) == _renamed(row["calls"])
    a = cli.build_parser().parse_args(["--threads", "2", *row["argv"]])
    settings = json.loads(json.dumps(cli._settings(a), default=str))  # the job log's first line
    for new in NEW_FLAGS.get(row["argv"][0], ()):
        settings.pop(new, None)
    assert settings == row["settings"]


def test_every_rule_command_is_covered():
    """Each ``PD + " <stage>`` of the rules is among the recorded commands (a new rule: rerun
    tests/collect_cli_commands.py)."""
    ruled = {m for f in RULES.glob("*.smk") for m in re.findall(r'PD \+ f?"\s*([a-z{}.-]+)', f.read_text())}
    ruled = {s for r in ruled for s in (("rerank-pointwise", "rerank-pairwise") if "{" in r else (r,))}
    assert ruled <= {r["argv"][0] for r in COMMANDS}
    assert ruled <= {s.name for s in cli.STAGES}


def _toy(tmp: str, out: str, *, rounds: int = 3, mode: Literal["fast", "slow"] = "fast",
         limit: int | None = None, tags: tuple[str, ...] = (), ratio: float = 0.5, flag: bool = False) -> dict:
    """A stage that is only a signature.

    Args:
        rounds: how many rounds
        limit: at most this many (null: all); ~30% of them
    """
    return {"tmp": tmp, "out": out, "rounds": rounds, "mode": mode, "limit": limit, "tags": tags, "ratio": ratio,
            "flag": flag}


TOY = [cli.stage(_toy, "toy")]


def _toy_call(*argv):
    a = cli.build_parser(TOY).parse_args(["toy", *argv])
    return cli.run(a)


def test_a_new_parameter_is_a_new_flag_with_its_help(capsys):
    assert _toy_call("--tmp", "t", "--out", "o") == {"tmp": "t", "out": "o", "rounds": 3, "mode": "fast",
                                                     "limit": None, "tags": (), "ratio": 0.5, "flag": False}
    got = _toy_call("--tmp", "t", "--out", "o", "--rounds", "5", "--mode", "slow", "--limit", "7", "--tags", "a", "b",
                    "--ratio", "0.25", "--flag")
    assert got == {"tmp": "t", "out": "o", "rounds": 5, "mode": "slow", "limit": 7, "tags": ["a", "b"],
                   "ratio": 0.25, "flag": True}
    with pytest.raises(SystemExit):
        cli.build_parser(TOY).parse_args(["toy", "--help"])
    text = capsys.readouterr().out
    assert "A stage that is only a signature." in text
    assert re.search(r"--rounds ROUNDS\s+how many rounds", text)
    assert "at most this many (null: all); ~30% of them" in " ".join(text.split())
    assert "{fast,slow}" in text


@pytest.mark.parametrize("argv", [["toy", "--tmp", "t"], ["toy", "--tmp", "t", "--out", "o", "--bogus", "1"],
                                  ["toy", "--tmp", "t", "--out", "o", "--mode", "medium"],
                                  ["toy", "--tmp", "t", "--out", "o", "--rounds", "many"]])
def test_a_wrong_command_is_one_error_line(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.build_parser(TOY).parse_args(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert re.match(r"pairdistill( toy)?: error: ", err[-1]) and not any("Traceback" in x for x in err)


def test_main_rejects_an_unknown_option(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["gather", "--shards", "a", "--schema", "run", "--out", "o", "--bogus"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == "pairdistill: error: unrecognized arguments: --bogus"


@pytest.mark.parametrize("words, value", [(["true"], True), (["yes"], True), (["1"], True), (["on"], True), ([], True),
                                          (["false"], False), (["no"], False), (["0"], False), (["off"], False)])
def test_bool_words(words, value):
    assert _toy_call("--tmp", "t", "--out", "o", "--flag", *words)["flag"] is value


@pytest.mark.parametrize("word, value", [("none", None), ("null", None), ("all", None), ("", None), ("4", 4)])
def test_none_words(word, value):
    assert _toy_call("--tmp", "t", "--out", "o", "--limit", word)["limit"] == value


def test_bad_bool_is_one_line(capsys):
    with pytest.raises(SystemExit):
        _toy_call("--tmp", "t", "--out", "o", "--flag", "maybe")
    assert "expected true/false, got 'maybe'" in capsys.readouterr().err


def test_every_stage_lists_its_options_with_help(capsys):
    for s in cli.STAGES:
        with pytest.raises(SystemExit):
            cli.build_parser().parse_args([s.name, "--help"])
        assert "".join(cli.summary_line(s.fn).split()) in "".join(capsys.readouterr().out.split())
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--micro-batch MICRO_BATCH queries per forward/backward (gradient cache)" in text
    assert "(less memory, ~30% slower)" in text and "--processes PROCESSES data-parallel processes" in text


def test_fit_fusion_needs_its_output(tmp_path, capsys):
    argv = ["fit-fusion", "--kind", "pointwise", "--corpus", "c", "--queries", "q", "--qrels", "r", "--out", "o",
            "--loss-out", "l", "--split", "train"]
    assert cli.main(argv) == 2
    assert capsys.readouterr().err.strip() == "error: fit-fusion --kind pointwise needs --plain-out"
