"""colbert-ai's C++ extensions are built by envs/setup.sh, not by the first index or search job."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _checked_by_setup() -> set[str]:
    loop = re.search(r"for ext in ([^;]+); do", (REPO / "envs" / "setup.sh").read_text())
    return set(loop.group(1).split())


@pytest.mark.slow  # three processes, each loading colbert-ai's extensions
def test_setup_builds_every_extension_colbert_loads():
    """build_extensions (what setup.sh runs) leaves exactly the extensions setup.sh checks for, so a
    finished set-up skips the build and a partial one redoes it; in the checkout's cache, built there
    by set-up, this only loads them."""
    cache = REPO / ".cache" / "torch_extensions"
    code = "from pairdistill.students.colbert import build_extensions; print(*build_extensions())"  # the last line; colbert-ai logs before it
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "TORCH_EXTENSIONS_DIR": str(cache)}).stdout.splitlines()[-1].split()
    assert {name.removesuffix(".so") for name in out} == _checked_by_setup()
    for name in _checked_by_setup():
        assert (cache / name / f"{name}.so").is_file()
