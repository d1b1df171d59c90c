"""inference.* in the workflow: the default (backend auto) and any other setting add their
--inference-* flags to exactly the encoding and scoring rules (backend torch: none; a finished run
plans nothing new), and a backend that cannot run is one line naming inference.backend before any
job runs."""

from __future__ import annotations

import importlib.util
import re

import pytest

from workflow import DATA_DIR, snakemake, write_config

# rules whose jobs encode or score without gradients, in the default's DAG (see rules/common.smk)
FAST = {"index", "retrieve", "evaluate", "pointwise", "pairwise", "fit_fusion_pointwise", "fit_fusion_pairwise",
        "rerank_teacher", "rerank_plain_fusion", "pair_accuracy", "corpus_baselines"}


def _commands(out: str) -> dict[str, list[str]]:
    """rule -> the shell commands a dry run -p prints for its jobs."""
    rules: dict[str, list[str]] = {}
    rule = None
    lines = out.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^(?:local)?rule (\w+):", line)
        if m:
            rule = m.group(1)
        elif rule and "-m pairdistill" in line:
            rules.setdefault(rule, []).append(line.strip())
    return rules


def _dry(tmp_path, *args, overlay=None):
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg = write_config(tmp_path / "overlay.yaml", {"data_dir": str(DATA_DIR), **(overlay or {})})
    return snakemake(tmp_path, "-n", "-p", *args, configfiles=(cfg,), check=False)


def _flagged(commands: dict[str, list[str]], flag: str) -> set[str]:
    return {r for r, cmds in commands.items() if all(flag in c for c in cmds)}


def test_the_default_asks_for_auto_in_the_encoding_rules_only(tmp_path):
    """config.yaml's inference.backend auto reaches exactly the encoding and scoring rules; with
    backend torch no command carries a flag, and the other rules' commands are the same either way."""
    default = _dry(tmp_path / "a")
    assert default.returncode == 0, default.stderr[-3000:]
    commands = _commands(default.stdout)
    assert _flagged(commands, "--inference-backend auto") == FAST & set(commands), commands.keys()
    assert not any("--inference" in c for r, cmds in commands.items() if r not in FAST for c in cmds)
    assert not any("--inference-quantize" in c or "--inference-precision" in c for cmds in commands.values()
                   for c in cmds)  # only the keys that differ from the stages' own default
    eager = _dry(tmp_path / "b", "--config", "inference={backend: torch}")
    assert eager.returncode == 0, eager.stderr[-3000:]
    assert "--inference" not in eager.stdout
    base = _commands(eager.stdout)
    for rule in set(commands) - FAST:
        assert sorted(commands[rule]) == sorted(base[rule]), rule


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino not installed")
def test_openvino_adds_the_flags_to_the_encoding_rules_only(tmp_path):
    eager = _dry(tmp_path / "a", "--config", "inference={backend: torch}")
    assert eager.returncode == 0, eager.stderr[-3000:]
    proc = _dry(tmp_path / "b", "--config", "inference={backend: openvino, quantize: int8}")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    commands = _commands(proc.stdout)
    assert _flagged(commands, "--inference-backend openvino --inference-quantize int8") == FAST & set(commands)
    assert not any("--inference" in c for r, cmds in commands.items() if r not in FAST for c in cmds)
    assert not any("--inference-precision" in c for cmds in commands.values() for c in cmds)
    base = _commands(eager.stdout)
    for rule in set(commands) - FAST:
        assert sorted(commands[rule]) == sorted(base[rule]), rule


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is not None, reason="onnxruntime is installed")
def test_an_uninstalled_backend_is_one_line_naming_the_key(tmp_path):
    proc = _dry(tmp_path, "--config", "inference={backend: onnx}")
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    lines = [ln for ln in out.splitlines() if "inference.backend" in ln]
    assert len(lines) == 1 and "onnx" in lines[0] and "not installed" in lines[0], out[-2000:]
    assert "Traceback" not in out


def test_an_unknown_backend_fails_the_schema(tmp_path):
    proc = _dry(tmp_path, "--config", "inference={backend: tensorrt}")
    assert proc.returncode != 0 and "backend" in proc.stdout + proc.stderr


@pytest.mark.slow  # it needs the session-wide finished run (about a minute)
def test_a_finished_run_plans_nothing_under_the_default(fusion_run):
    proc = snakemake(fusion_run["workdir"], "-n", configfiles=(fusion_run["config"],))
    assert "Nothing to be done" in proc.stdout + proc.stderr, proc.stdout[-3000:]
