"""The documentation: a short README.md and the mkdocs site under docs/ (mkdocs.yml).

The site is built with `mkdocs build --strict`, and mkdocs.yml turns a page missing from `nav`, a link
to a missing file or anchor and an absolute link into warnings, so any of them fails here. The README
is read on GitHub, not by mkdocs: its links into docs/ are checked by hand below.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
README_MAX_LINES = 200


def nav_pages(nav):
    """Every page file named in mkdocs.yml's nav (entries nest: {title: page} or {title: [...]})."""
    for entry in nav:
        if isinstance(entry, str):
            yield entry
        elif isinstance(entry, dict):
            for value in entry.values():
                yield from nav_pages(value) if isinstance(value, list) else [value]


@pytest.fixture(scope="module")
def mkdocs_config():
    return yaml.safe_load((REPO / "mkdocs.yml").read_text())


def test_site_builds_strict(tmp_path):
    """A warning of any kind (a broken link or anchor, an orphan page) aborts a strict build."""
    pytest.importorskip("mkdocs", reason="the docs extra is not installed (envs/setup.sh installs it)")
    pytest.importorskip("material", reason="the docs extra is not installed (envs/setup.sh installs it)")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # material's end-of-life banner, not a warning
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(REPO / "mkdocs.yml"),
         "-d", str(tmp_path / "site")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{log}"
    assert "WARNING" not in log, log
    pages = {p.stem for p in (REPO / "docs").glob("*.md")}
    built = {p.stem for p in (tmp_path / "site").glob("*.html")}
    assert pages <= built, f"pages not built: {sorted(pages - built)}"


def test_nav_lists_every_page(mkdocs_config):
    assert mkdocs_config["docs_dir"] == "docs"
    assert mkdocs_config.get("strict") is True
    assert mkdocs_config["theme"]["name"] == "material"
    # offline: no fonts fetched from Google
    assert mkdocs_config["theme"].get("font") is False
    listed = list(nav_pages(mkdocs_config["nav"]))
    assert len(listed) == len(set(listed)), f"a page listed twice: {listed}"
    on_disk = sorted(str(p.relative_to(REPO / "docs")) for p in (REPO / "docs").rglob("*.md"))
    assert sorted(listed) == on_disk


def test_readme_is_short():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines (at most {README_MAX_LINES})"


def test_readme_links_into_docs_exist():
    """Each relative link of the README (to docs/<page>.md, optionally #anchor, or any repository
    file) names a file that exists; an anchor into a page names one of that page's headings."""
    readme = (REPO / "README.md").read_text()
    readme = re.sub(r"```.*?```", "", readme, flags=re.S)  # code blocks hold no links
    targets = re.findall(r"\]\(([^)\s]+)\)", readme)
    relative = [t for t in targets if not re.match(r"[a-z]+://|mailto:|#", t)]
    assert any(t.startswith("docs/") for t in relative), "the README links into no docs page"
    for target in relative:
        path, _, anchor = target.partition("#")
        assert (REPO / path).exists(), f"README.md links to {target}, which does not exist"
        if anchor and path.endswith(".md"):
            assert anchor in heading_anchors((REPO / path).read_text()), \
                f"README.md links to {target}: {path} has no heading with that anchor"


def heading_anchors(markdown):
    """The ids mkdocs' toc extension gives a page's headings (its default slugify: lower-case, words
    joined by '-', punctuation dropped), which GitHub's anchors agree with for plain headings."""
    text = re.sub(r"```.*?```", "", markdown, flags=re.S)
    anchors = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *$", text, flags=re.M):
        heading = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
        slug = re.sub(r"[^\w\s-]", "", heading).strip().lower()
        anchors.add(re.sub(r"[-\s]+", "-", slug))
    return anchors


def test_heading_anchors():
    assert heading_anchors("# The method and the DAG\n## `shards`: query shards\n```\n# not one\n```\n") == {
        "the-method-and-the-dag", "shards-query-shards"}
