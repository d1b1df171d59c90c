"""``python -m pairdistill <stage> ...``: the one entry point the Snakemake rules call.

Each stage is a function (the table ``STAGES``) and its flags are that function's parameters: a
parameter ``x_y`` is the flag ``--x-y`` (``x_path`` is ``--x``: the function keeps the loaded x
under the short name), its type hint says how the flag's words parse, a parameter without a default
is a required flag, and the help is the docstring's ``Args:`` entry (or, for a setting several
stages share, the entry in the module docstring's ``Args:``). The stage's one-line help is the
docstring's first paragraph. A TypedDict parameter is a group of flags, one per key (its
``Opt(prefix=...)`` before them), passed as the dict of the keys given; a sequence is a flag of
several words, a sequence of sequences a repeated flag; a bool flag alone is true. So a new stage
setting is a new parameter of its function and a new word in its rule, and no line here. Input
errors end the process with one line (``error: <file>:<line>: <problem>``) and exit code 2.
"""

from __future__ import annotations

import argparse
import collections.abc
import dataclasses
import importlib
import inspect
import json
import re
import sys
import time
import types
import typing
from typing import Any, Callable, Literal, Union

from . import preemption, runtime
from .errors import InputError, SettingError


@dataclasses.dataclass(frozen=True)
class Opt:
    """``Annotated[T, Opt(...)]``: what a type hint cannot say about a flag.

    ``parse`` reads the flag's word instead of the hint's parser; on a TypedDict parameter,
    ``prefix`` goes before its fields' flags; on a TypedDict field, ``flag`` is its flag."""

    parse: Callable[[str], Any] | None = None
    prefix: str = ""
    flag: str | None = None


@dataclasses.dataclass(frozen=True)
class Stage:
    """A subcommand: ``target`` is ``"module:function"`` under pairdistill (or the function)."""

    name: str
    target: str | Callable
    gpu: bool = False  # puts a model on the GPU: claims one before anything touches CUDA
    processes: bool = False  # takes --processes: data-parallel processes launched by this command
    parser: str | None = None  # "module:function" adding its own arguments (the stage gets the namespace)

    @property
    def fn(self) -> Callable:
        return _resolve(self.target)


def _resolve(target: str | Callable) -> Callable:
    if callable(target):
        return target
    module, name = target.split(":")
    return getattr(importlib.import_module(f"pairdistill.{module}"), name)


def stage(target: str | Callable, name: str | None = None, **kw) -> Stage:
    """A stage named ``name``, by default its function's name with ``-`` for ``_``."""
    fn_name = target.split(":")[1] if isinstance(target, str) else target.__name__
    return Stage(name or fn_name.replace("_", "-"), target, **kw)


STAGES = [
    stage("stages:prepare"),
    stage("stages:prepare_lotte"),
    stage("stages:prepare_qa_passages"),
    stage("stages:prepare_qa_questions", "prepare-qa"),
    stage("stages:init_checkpoint", gpu=True),
    stage("stages:index", gpu=True),
    stage("stages:retrieve", gpu=True),
    stage("stages:fit_teacher", gpu=True),
    stage("stages:fit_fusion_teacher", "fit-fusion"),
    stage("stages:pointwise", gpu=True),
    stage("stages:sample_pairs"),
    stage("stages:pairwise", gpu=True),
    stage("export:export"),
    stage("stages:gather"),
    stage("io:link_artifact", "link"),
    stage("stages:train", gpu=True, processes=True),
    stage("stages:evaluate_retriever", "evaluate", gpu=True),
    stage("stages:evaluate_qa", gpu=True),
    stage("stages:rerank_pointwise", gpu=True),
    stage("stages:rerank_pairwise", gpu=True),
    stage("stages:pair_accuracy"),
    stage("stages:rebase_fusion_teacher", "rebase-fusion"),
    stage("stages:corpus_baselines"),
    stage("selfcheck:run", "selfcheck"),
    stage("bench.benchmark_files:report", "benchmarks"),
    stage("inspection:main", "inspect", parser="inspection:add_arguments"),
    stage("figures:draw_all", "figures"),
    stage("figures:metrics", "ablation-figure"),
    stage("stages:summary"),
    stage("ablations:ablation_table"),
    stage("seeds:seed_table"),
    stage("figures:seeds", "seed-figure"),
]

# ---------------------------------------------------------------------------------------------
# words -> values


def _bool(v: str) -> bool:
    if v.lower() in ("1", "true", "yes", "on"):
        return True
    if v.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {v!r}")


def _opt_int(v: str) -> int | None:
    return None if v.lower() in ("none", "null", "all", "") else int(v)


def _opt_str(v: str) -> str | None:
    return None if v.lower() in ("none", "null", "") else v


def _json(v: str):
    return json.loads(v)


_json.__name__ = "JSON"  # argparse's "invalid JSON value" message


def _split(hint) -> tuple[Any, Opt, bool]:
    """(the hint without Annotated and None, its Opt, whether None is allowed)."""
    opt = Opt()
    if typing.get_origin(hint) is typing.Annotated:
        hint, *extras = typing.get_args(hint)
        opt = next((e for e in extras if isinstance(e, Opt)), opt)
        hint, inner, optional = _split(hint)
        return hint, opt if opt != Opt() else inner, optional
    if typing.get_origin(hint) in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        hint, opt, _ = _split(args[0])  # str | Path: the first
        return hint, opt, optional
    return hint, opt, False


_SEQUENCES = (list, tuple, collections.abc.Sequence)


def _word(hint, optional: bool) -> dict:
    """argparse's type (and choices) for one word of a flag of type ``hint``."""
    if typing.get_origin(hint) is Literal:
        choices = typing.get_args(hint)
        return {"type": type(choices[0]), "choices": choices}
    if hint is bool:
        return {"type": _bool}
    if hint is int:
        return {"type": _opt_int if optional else int}
    if hint is str:
        return {"type": _opt_str if optional else str}
    if hint is dict or typing.get_origin(hint) is dict:
        return {"type": _json}
    if hint is float:
        return {"type": float}
    raise TypeError(f"no flag for a parameter of type {hint!r}")


def _is_sequence(hint) -> bool:
    return typing.get_origin(hint) in _SEQUENCES


def _words(hint, required: bool, default) -> dict:
    """nargs, type and choices of a sequence (fixed-length tuple, or of any length)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple and args and args[-1] is not Ellipsis:
        kinds = {_split(a)[0] for a in args}
        return {"nargs": len(args), **_word(kinds.pop() if len(kinds) == 1 else str, False)}
    elem = _split(args[0])[0] if args else str
    return {"nargs": "+" if required or default else "*", **_word(elem, False)}


def _argument(hint, required: bool, default, opt: Opt, optional: bool) -> dict:
    """add_argument's keywords for a flag of type ``hint``."""
    if opt.parse:
        return {"type": opt.parse}
    if _is_sequence(hint):
        elem = _split(typing.get_args(hint)[0])[0] if typing.get_args(hint) else str
        if _is_sequence(elem):  # a sequence of sequences: a repeated flag
            return {"action": "append", **_words(elem, True, None)}
        return _words(hint, required, default)
    if hint is bool:
        return {"type": _bool, "nargs": "?", "const": True, "metavar": "true|false"}
    return _word(hint, optional)


# ---------------------------------------------------------------------------------------------
# signatures -> flags


def _doc_args(doc: str | None) -> dict[str, str]:
    """``name: text`` entries of a docstring's ``Args:`` block (continuation lines indented more)."""
    entries: dict[str, str] = {}
    lines = inspect.cleandoc(doc or "").splitlines()
    if "Args:" not in lines:
        return entries
    name = None
    for line in lines[lines.index("Args:") + 1:]:
        if line.strip() and not line.startswith(" "):
            break
        m = re.match(r"^    (\w+): ?(.*)$", line)
        if m:
            name = m.group(1)
            entries[name] = m.group(2)
        elif name and line.strip():
            entries[name] += " " + line.strip()
    return entries


def summary_line(fn: Callable) -> str:
    """A stage's one-line help: its docstring's first paragraph, on one line."""
    return " ".join(inspect.cleandoc(fn.__doc__ or "").split("\n\n")[0].split())


@dataclasses.dataclass
class _Flag:
    flag: str
    dest: str
    kwargs: dict
    param: str  # the function's parameter
    field: str | None = None  # its key, for a TypedDict parameter


def _hints(obj) -> dict:
    return typing.get_type_hints(obj, include_extras=True)


def flags(fn: Callable) -> list[_Flag]:
    """The flags of the stage ``fn``, from its signature, type hints and docstring."""
    hints = _hints(fn)
    module = sys.modules.get(fn.__module__)
    helps = {**_doc_args(getattr(module, "__doc__", None)), **_doc_args(fn.__doc__)}
    out = []
    for p in inspect.signature(fn).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        hint, opt, optional = _split(hints.get(p.name, str))
        required = p.default is p.empty
        if typing.is_typeddict(hint):  # a group: one flag per key, given keys only
            field_helps = _doc_args(hint.__doc__)
            for key, field_hint in _hints(hint).items():
                field_hint, field_opt, _ = _split(field_hint)
                flag = field_opt.flag or opt.prefix + key.replace("_", "-")
                must = key in hint.__required_keys__ and hint.__total__
                kw = _argument(field_hint, must, None, field_opt, not must)
                kw.update(required=True) if must else kw.update(default=None)
                out.append(_Flag(flag, flag.replace("-", "_"), {**kw, "help": field_helps.get(key)}, p.name, key))
            continue
        name = p.name[:-len("_path")] if p.name.endswith("_path") else p.name
        kw = _argument(hint, required, p.default, opt, optional)
        if required:
            kw["required"] = True
        else:
            kw["default"] = list(p.default) if kw.get("action") == "append" else p.default
        out.append(_Flag(name.replace("_", "-"), name, {**kw, "help": helps.get(p.name)}, p.name))
    for f in out:
        if f.kwargs["help"]:
            f.kwargs["help"] = f.kwargs["help"].replace("%", "%%")
    return out


def build_parser(stages: list[Stage] | None = None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="pairdistill", description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    sub = ap.add_subparsers(dest="stage", required=True)
    for s in stages or STAGES:
        fn = s.fn
        p = sub.add_parser(s.name, help=summary_line(fn), description=summary_line(fn))
        p.set_defaults(_stage=s, _flags=flags(fn) if not s.parser else [])
        if s.parser:
            _resolve(s.parser)(p)
        for f in p.get_default("_flags"):
            p.add_argument(f"--{f.flag}", dest=f.dest, **f.kwargs)
        if s.processes:
            p.add_argument("--processes", type=int, default=1,
                           help="data-parallel processes, one per GPU (launched by this command); 1: this process")
    return ap


def call_arguments(s: Stage, a: argparse.Namespace) -> dict:
    """The stage function's keyword arguments from the parsed flags."""
    kwargs: dict = {}
    for f in a._flags:
        value = getattr(a, f.dest)
        if f.field is None:
            kwargs[f.param] = value
        else:
            group = kwargs.setdefault(f.param, {})
            if value is not None:
                group[f.field] = value
    return kwargs


def run(a: argparse.Namespace):
    """Call the stage ``a`` names with its flags; a text it returns is printed."""
    s = a._stage
    result = s.fn(a) if s.parser else s.fn(**call_arguments(s, a))
    if isinstance(result, str):
        print(result, flush=True)
    return result


def _settings(a: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(a).items() if k not in ("_stage", "_flags")}


def launch(argv: list[str], processes: int) -> int:
    """Run this command as ``processes`` data-parallel processes (training on several GPUs): claim
    that many GPUs, then start one process per GPU with torch.distributed.run (what ``accelerate
    launch --multi_gpu`` runs); accelerate sets up their process group. Without GPUs the processes
    share the CPU (gloo), which is how the tests run it."""
    import os
    import subprocess

    import torch

    if torch.cuda.is_available():
        visible = len(runtime.visible_gpu_ids())
        if visible < processes:
            raise SettingError(f"resources.train.gpu: {processes} processes need {processes} GPUs; {visible} visible")
        runtime.claim_gpus_for_launch(processes)
    else:
        print(f"no GPU visible: the {processes} processes share the CPU (gloo)", flush=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
           "-m", "pairdistill", *argv]
    print(f"launching: {' '.join(cmd)}", flush=True)
    # the launcher's death (SIGKILL included) takes torch.distributed.run with it, whose death takes the processes
    return subprocess.run(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                          preexec_fn=lambda: runtime.die_with_parent(15)).returncode


def main(argv: list[str] | None = None) -> int:
    import os

    runtime.lean_transformers_import()
    argv = sys.argv[1:] if argv is None else list(argv)
    a = build_parser().parse_args(argv)
    s: Stage = a._stage
    if getattr(a, "processes", 1) > 1 and "LOCAL_RANK" not in os.environ:
        preemption.arm(a.stage)  # the launcher: it names the group a cue kills (its processes' are their own)
        try:
            code = launch(argv, a.processes)
        except SettingError as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            return 2
        return code
    if s.parser:  # output for a person or a script (inspect): no start and end lines
        return run(a)
    if "LOCAL_RANK" in os.environ:  # one of a data-parallel job's processes
        runtime.die_with_parent()
    preemption.arm(a.stage)
    runtime.set_threads(a.threads)
    if s.gpu:
        runtime.device()
    print(f"pairdistill {a.stage}: {json.dumps(_settings(a), default=str)}", flush=True)
    start = time.monotonic()
    try:
        run(a)
    except (InputError, SettingError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    print(f"pairdistill {a.stage}: done in {time.monotonic() - start:.1f}s", flush=True)
    return 0
