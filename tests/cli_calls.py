"""The stage calls a ``pairdistill`` command line makes: each function a stage ends in is replaced
by a recorder, the command is parsed and run, and the calls are returned as (function, its
arguments with the defaults filled in). Used by tests/test_cli.py and tests/collect_cli_commands.py."""

from __future__ import annotations

import importlib
import inspect

# the functions the stages end in (a stage of the command line may call one or two of them)
LEAVES = [f"stages.{n}" for n in (
    "prepare", "prepare_lotte", "prepare_qa_passages", "prepare_qa_questions", "init_checkpoint", "index",
    "retrieve", "fit_teacher", "fit_fusion_teacher", "rebase_fusion_teacher", "pointwise", "sample_pairs",
    "pairwise", "gather", "teacher_cache_report", "train", "evaluate_retriever", "evaluate_qa", "rerank_pointwise",
    "rerank_pairwise", "summarize", "pair_accuracy", "corpus_baselines")] + [
    "ablations.write", "selfcheck.run", "figures.draw_all", "figures.metrics", "io.link_artifact",
    "bench.benchmark_files.report", "seeds.seed_table", "figures.seeds", "export.export"]


def _plain(v):
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def calls_of(argv: list[str]) -> list[dict]:
    from pairdistill import cli

    a = cli.build_parser().parse_args(argv)  # from the real signatures, before the recorders replace them
    calls, saved = [], []
    for leaf in LEAVES:
        mod_name, name = leaf.rsplit(".", 1)
        mod = importlib.import_module(f"pairdistill.{mod_name}")
        fn = getattr(mod, name)

        def recorder(*args, _fn=fn, _leaf=leaf, **kw):
            bound = inspect.signature(_fn).bind(*args, **kw)
            bound.apply_defaults()
            arguments = dict(bound.arguments)
            for p in inspect.signature(_fn).parameters.values():
                if p.kind is p.VAR_KEYWORD:
                    arguments.update(arguments.pop(p.name))
            calls.append({"fn": _leaf, "kwargs": _plain(arguments)})

        saved.append((mod, name, fn))
        setattr(mod, name, recorder)
    try:
        cli.run(a)
    finally:
        for mod, name, fn in saved:
            setattr(mod, name, fn)
    return calls
