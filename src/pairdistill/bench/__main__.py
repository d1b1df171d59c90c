"""``python -m pairdistill.bench <name> [args...]``: run the benchmark ``name`` (see ``--help``)."""

from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.util
import sys

from . import BENCHMARKS

PROG = "python -m pairdistill.bench"


def _summary(module: str) -> str:
    """The first line of a benchmark module's docstring, read without importing it (torch)."""
    spec = importlib.util.find_spec(f"{__package__}.{module}")
    with open(spec.origin, encoding="utf-8") as fh:
        doc = ast.get_docstring(ast.parse(fh.read())) or ""
    return doc.split("\n")[0]


def usage() -> str:
    width = max(map(len, BENCHMARKS))
    rows = [f"  {name:<{width}}  {_summary(module)}" for name, module in BENCHMARKS.items()]
    return "\n".join([f"usage: {PROG} <name> [args...]   ({PROG} <name> --help: its options)", "",
                      "benchmarks:", *rows])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in BENCHMARKS:
        print(f"{PROG}: error: no benchmark {name!r} (one of: {', '.join(BENCHMARKS)})", file=sys.stderr)
        return 2
    module = importlib.import_module(f"{__package__}.{BENCHMARKS[name]}")
    sys.argv[0] = f"{PROG} {name}"  # the benchmark's own parser names itself by it
    return module.main(rest) or 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):  # its output piped into head
        raise SystemExit(main())
