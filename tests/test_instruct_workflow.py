"""The instruction teachers in the workflow: their prompt and label words reach the scoring
commands, bad settings stop the run at start-up in one line, and the other teachers' commands do
not change (so none of their jobs reruns)."""

from __future__ import annotations

import pytest
import yaml
from conftest import CAUSAL_LABELS, CAUSAL_PROMPTS

from pairdistill.teachers.instruct import DEFAULT_LABELS, DEFAULT_PROMPT
from workflow import DATA_DIR, REPO, snakemake, write_config


def _dry(tmp_path, teachers: dict, *args: str):
    cfg = write_config(tmp_path / "overlay.yaml", {"data_dir": str(DATA_DIR), "iteration": 1, "teachers": teachers,
                                                   "evaluate": {"teacher_rerank": {"enabled": False}}})
    proc = snakemake(tmp_path, "-n", *args, configfiles=(cfg,), check=False)
    return proc.returncode, proc.stdout + proc.stderr


def test_the_scoring_commands_carry_prompt_and_labels(tmp_path, tiny_flan_t5_dir):
    code, out = _dry(tmp_path, {
        "pointwise": {"model": tiny_flan_t5_dir, "family": "instruct-pointwise"},
        "pairwise": {"model": tiny_flan_t5_dir, "family": "instruct-pairwise", "prompt": CAUSAL_PROMPTS["pairwise"],
                     "labels": list(CAUSAL_LABELS["pairwise"])}}, "-p")
    assert code == 0, out[-3000:]
    assert not any(line.split()[:1] in (["fit_fusion_pointwise"], ["fit_teacher"]) for line in out.splitlines())
    # the pointwise prompt is config.yaml's default, the paper's; the label words are quoted whole
    assert f"--prompt '{DEFAULT_PROMPT['pointwise']}' --labels Yes No >" in out
    assert f"--prompt '{CAUSAL_PROMPTS['pairwise']}' --labels ' A' ' B' >" in out


def test_the_teacher_quality_commands_carry_prompt_and_labels(tmp_path, tiny_flan_t5_dir):
    """Table 5's reranking and pair accuracy judge an instruction teacher with its own prompt."""
    cfg = write_config(tmp_path / "overlay.yaml", {"data_dir": str(DATA_DIR), "iteration": 1, "teachers": {
        "pointwise": {"model": tiny_flan_t5_dir, "family": "instruct-pointwise"},
        "pairwise": {"model": tiny_flan_t5_dir, "family": "instruct-pairwise", "prompt": CAUSAL_PROMPTS["pairwise"],
                     "labels": list(CAUSAL_LABELS["pairwise"])}}})
    out = snakemake(tmp_path, "-n", "-p", configfiles=(cfg,)).stdout
    # a command spans lines (the prompts hold newlines): each is the text after its "Shell command:"
    blocks = out.split("Shell command:")
    commands = {name: next(b for b in blocks if f" {name} --" in b)
                for name in ("rerank-pointwise", "rerank-pairwise", "pair-accuracy")}
    assert f"--prompt '{DEFAULT_PROMPT['pointwise']}' --labels Yes No" in commands["rerank-pointwise"]
    for name in ("rerank-pairwise", "pair-accuracy"):
        assert f"--prompt '{CAUSAL_PROMPTS['pairwise']}' --labels ' A' ' B'" in commands[name], name


def test_the_other_teachers_commands_are_unchanged(tmp_path):
    code, out = _dry(tmp_path, {}, "-p")
    assert code == 0, out[-3000:]
    assert "pairdistill --threads 2 pointwise" in out and "--prompt" not in out and "--labels" not in out


def test_config_defaults_are_the_families_defaults():
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    for kind in ("pointwise", "pairwise"):
        assert config["teachers"][kind]["prompt"] == DEFAULT_PROMPT[kind]
        assert tuple(config["teachers"][kind]["labels"]) == DEFAULT_LABELS[kind]


@pytest.mark.parametrize("teachers, line", [
    ({"pointwise": {"family": "instruct-pointwise", "prompt": "Relevant? {query}"}},
     "teachers.pointwise.prompt: the template has no {passage} field (it needs {query}, {passage})"),
    ({"pairwise": {"family": "instruct-pairwise", "labels": ["A", "A"]}},
     "teachers.pairwise.labels: expected two different words"),
    ({"pointwise": {"family": "instruct-pointwise", "model": "fit"}},
     "teachers.pointwise.family: instruct-pointwise prompts a language model; set teachers.pointwise.model"),
])
def test_bad_instruction_settings_stop_the_run_in_one_line(tmp_path, tiny_flan_t5_dir, teachers, line):
    others = {"pointwise": {"family": "monot5"}, "pairwise": {"family": "duot5"}}  # no fitted teacher
    teachers = {k: {"model": tiny_flan_t5_dir, **others[k], **teachers.get(k, {})} for k in others}
    code, out = _dry(tmp_path, teachers)
    assert code != 0
    assert [x for x in out.splitlines() if line in x], out[-3000:]


def test_unquoted_yes_no_are_named_by_the_schema(tmp_path, tiny_flan_t5_dir):
    """YAML reads bare yes/no as booleans: the schema names the key rather than a tokenizer failing later."""
    cfg = tmp_path / "overlay.yaml"
    cfg.write_text(f"data_dir: {DATA_DIR}\nteachers:\n  pointwise:\n    model: {tiny_flan_t5_dir}\n"
                   "    family: instruct-pointwise\n    labels: [yes, no]\n")
    proc = snakemake(tmp_path, "-n", configfiles=(cfg,), check=False)
    assert proc.returncode != 0 and "labels" in proc.stdout + proc.stderr and "True" in proc.stdout + proc.stderr
