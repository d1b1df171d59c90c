"""``python -m pairdistill.bench <name>``: the table of benchmarks and the dispatcher over it."""

from __future__ import annotations

import ast
import importlib.util
import sys

import pytest

from pairdistill.bench import BENCHMARKS
from pairdistill.bench.__main__ import main


def test_every_benchmark_is_a_module_with_a_main():
    for name, module in BENCHMARKS.items():
        spec = importlib.util.find_spec(f"pairdistill.bench.{module}")
        assert spec is not None, name
        tree = ast.parse(open(spec.origin, encoding="utf-8").read())
        assert any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body), name


def test_help_lists_every_benchmark_and_an_unknown_name_is_one_line(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {name} " in out for name in BENCHMARKS)
    assert main(["no-such-benchmark"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no benchmark 'no-such-benchmark'" in err


def test_a_benchmark_gets_its_own_arguments(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["pytest"])  # the dispatcher names the benchmark's parser in argv[0]
    with pytest.raises(SystemExit) as exc:
        main(["memory", "--help"])
    assert exc.value.code == 0
    assert "usage: python -m pairdistill.bench memory" in capsys.readouterr().out
