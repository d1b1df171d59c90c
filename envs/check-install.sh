#!/usr/bin/env bash
# pyproject.toml's dependencies are enough: `pip install .` into a fresh virtual environment, at
# envs/constraints.txt's versions, gives a working `pairdistill` and `snakemake`. A CI step
# (.ci/run), not a test: it takes ~4 minutes here even with pip's cache warm.
# A real fresh venv (no --system-site-packages), so a dependency the code imports but pyproject.toml
# does not declare shows up here and not on a user's machine. torch goes in first, as in
# envs/setup.sh (pip's configured find-links hold the CPU wheel); the rest comes from the configured
# indexes and pip's cache. Built from a copy of pyproject.toml and src/, so the checkout gets no
# build/ directory; run from outside the checkout, so nothing resolves to its src/.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
unset PYTHONPATH VIRTUAL_ENV
constraints=$PWD/envs/constraints.txt
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/pkg"
tar --exclude=__pycache__ --exclude='*.pyc' --exclude='*.egg-info' -cf - pyproject.toml src | tar -C "$tmp/pkg" -xf -
start=$SECONDS
"$PYTHON" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install -q -c "$constraints" torch==2.13.0
"$tmp/venv/bin/python" -m pip install -q -c "$constraints" "$tmp/pkg"
cd "$tmp"
venv/bin/pairdistill --help | grep -q "usage: pairdistill"
case "$(venv/bin/snakemake --version)" in 9.*) ;; *) echo "snakemake is not 9.x" >&2; exit 1 ;; esac
venv/bin/python -c "
import sys, pairdistill, pairdistill.stages
assert pairdistill.__file__.startswith(sys.prefix), pairdistill.__file__"
venv/bin/python -m pip check
# every installed version is the one envs/constraints.txt pins (nothing resolved past it)
venv/bin/python -m pip freeze --all | venv/bin/python -c "
import re, sys
norm = lambda n: re.sub(r'[-_.]+', '-', n).lower()
pins = dict(norm(l).split('==') for l in open(sys.argv[1]).read().splitlines() if l and not l.startswith('#'))
got = dict(norm(l).split('==') for l in sys.stdin.read().splitlines() if '==' in l)
off = {k: (v, pins.get(k)) for k, v in got.items() if k not in ('pip', 'pairdistill') and pins.get(k) != v.split('+')[0]}
assert not off, f'installed (version, pinned) off envs/constraints.txt: {off}'
print(f'fresh install: {len(got)} packages at the pinned versions')" "$constraints"
echo "pip install . into a fresh venv: pairdistill, snakemake and pairdistill.stages work ($((SECONDS - start)) s)"
