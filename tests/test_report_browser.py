"""The fusion end-to-end run's ``snakemake --report`` page in a real browser: headless Chromium.

Snakemake's report is a single-page app (React), so what a reader sees exists only after its
scripts run. Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``,
fds 3 and 4; no package but the browser): the test opens the report, fails on a console error or an
uncaught exception, checks that the menu shows every category the ``figures`` rule of
rules/report.smk files its results under, opens every result the way its eye button does and
checks that each figure is an <img> that loaded (natural width > 0), and writes screenshots of the
landing page and of every figure into its tmp dir (paths printed; ``pytest -s`` shows them).
Skipped where no Chromium is installed (.ci/run installs Debian's).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from workflow import DATA_DIR, REPO, snakemake

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt-get install chromium)"),
              pytest.mark.skipif(not (DATA_DIR / "scifact").is_dir(), reason="SciFact not found")]

WINDOW = (1400, 1000)


def report_categories() -> set[str]:
    """The categories of the `figures` rule's results (the ablation figure is the `ablations` target's)."""
    text = (REPO / "rules/report.smk").read_text()
    rule = text[text.index("rule figures:"):text.index("rule ablation_figure:")]
    return set(re.findall(r'figure\("\w+", "([^"]+)"', rule))


class Browser:
    """Headless Chromium and one page, over the DevTools protocol's pipe transport (NUL-ended JSON)."""

    def __init__(self, profile: Path):
        r_ours, w_chrome = os.pipe()  # chromium writes its replies to fd 4
        r_chrome, w_ours = os.pipe()  # and reads our commands from fd 3

        def fds():  # in the child, before it closes every fd but pass_fds
            r, w = os.dup(r_chrome), os.dup(w_chrome)  # above 4, so neither dup2 clobbers the other
            os.dup2(r, 3)
            os.dup2(w, 4)

        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
             "--no-first-run", "--no-default-browser-check", f"--user-data-dir={profile}",
             f"--window-size={WINDOW[0]},{WINDOW[1]}", "about:blank"],
            preexec_fn=fds, pass_fds=(3, 4), stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        os.close(r_chrome)
        os.close(w_chrome)
        self.rd, self.wr = os.fdopen(r_ours, "rb", buffering=0), os.fdopen(w_ours, "wb", buffering=0)
        self.buf, self.next_id, self.events = b"", 0, []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable", session=True)
        self.call("Emulation.setDeviceMetricsOverride", session=True, width=WINDOW[0], height=WINDOW[1],
                  deviceScaleFactor=1, mobile=False)

    def _read(self) -> dict:
        while b"\0" not in self.buf:
            chunk = self.rd.read(1 << 16)
            if not chunk:
                raise RuntimeError(f"Chromium closed its pipe (exit {self.proc.poll()})")
            self.buf += chunk
        msg, self.buf = self.buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method: str, session: bool = False, **params) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        self.wr.write(json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            if "method" in reply:
                self.events.append(reply)

    def js(self, expression: str):
        """The value of a JavaScript expression in the page (promises awaited)."""
        res = self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True,
                        awaitPromise=True)
        if "exceptionDetails" in res:
            raise AssertionError(f"{expression}: {res['exceptionDetails']}")
        return res["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 20):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {expression}")

    def screenshot(self, path: Path) -> Path:
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", session=True, format="png")["data"]))
        return path

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and failed loads the page reported so far."""
        out = []
        for ev in self.events:
            m, p = ev["method"], ev.get("params", {})
            if m == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert"):
                out.append("console." + p["type"] + ": " + " ".join(
                    str(a.get("value", a.get("description", ""))) for a in p["args"]))
            elif m == "Runtime.exceptionThrown":
                d = p["exceptionDetails"]
                out.append("exception: " + d.get("exception", {}).get("description", d.get("text", "")))
            elif m == "Log.entryAdded" and p["entry"]["level"] == "error":
                out.append(f"log ({p['entry']['source']}): {p['entry']['text']}")
        return out

    def close(self):
        try:
            self.call("Browser.close")
        except (RuntimeError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.rd.close()
        self.wr.close()


# Every result of the report with its category and subcategory, as the menu files them.
RESULTS_JS = """Object.entries(categories).flatMap(([cat, subs]) => Object.entries(subs).flatMap(
    ([sub, paths]) => paths.map(p => ({category: cat, subcategory: sub, path: p, mime: getResultMimeType(p)}))))"""

# Open a result as a reader does: from the menu, click its category, its subcategory where the
# category has several, then the eye button of its row; then wait for the figure's <img>.
OPEN_JS = """(async () => {{
    const r = {result};
    const pause = () => new Promise(ok => setTimeout(ok, 150));
    const click = (text) => {{
        const a = [...document.querySelectorAll("li a")].find(a => a.textContent.trim() === text);
        if (!a) throw new Error("no menu item " + text + " in " + document.body.innerText);
        a.click();
    }};
    app.setView({{navbarMode: "menu"}});  // the home button's view
    await pause();
    click(r.category);
    await pause();
    if (Object.keys(categories[r.category]).length > 1) {{ click(r.subcategory); await pause(); }}
    const row = [...document.querySelectorAll("tbody tr")].find(tr => tr.textContent.includes(r.path));
    if (!row) throw new Error("no row for " + r.path + " in " + document.body.innerText);
    row.querySelector("a").click();  // the eye button
    await pause();
    const img = [...document.querySelectorAll("img")].find(i => i.getAttribute("src") === results[r.path].data_uri);
    if (!img) return {{shown: app.state.resultPath, naturalWidth: null}};
    if (!img.complete) await new Promise(ok => {{ img.onload = ok; img.onerror = ok; }});
    return {{shown: app.state.resultPath, naturalWidth: img.naturalWidth, naturalHeight: img.naturalHeight}};
}})()"""


@pytest.fixture(scope="module")
def report(fusion_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "report.html"
    snakemake(fusion_run["workdir"], "--report", str(out), configfiles=(fusion_run["config"],))
    return out


def test_report_renders_every_section_and_figure(report, tmp_path):
    browser = Browser(tmp_path / "profile")
    shots = []
    try:
        browser.call("Page.navigate", session=True, url=report.as_uri())
        browser.wait_for("typeof app !== 'undefined' && document.body.innerText.includes('Workflow')")
        browser.wait_for("document.querySelector('#rulegraph canvas, #rulegraph svg') !== null")  # vega drew it
        shots.append(browser.screenshot(tmp_path / "landing.png"))
        menu = browser.js("document.body.innerText")
        missing = sorted(c for c in report_categories() if c not in menu)
        assert not missing, f"categories not in the report's menu: {missing}\n{menu}"

        results = browser.js(RESULTS_JS)
        figures = [r for r in results if r["mime"].startswith("image/")]
        expected = {f"{n}.png" for n in ("metrics", "loss", "teacher_scores", "disagreement", "teacher_cache",
                                         "benchmarks")}
        assert expected <= {Path(r["path"]).name for r in figures}, results
        broken = []
        for r in figures:
            img = browser.js(OPEN_JS.format(result=json.dumps(r)))
            if img["shown"] != r["path"] or not img["naturalWidth"]:
                broken.append((r["path"], img))
            shots.append(browser.screenshot(tmp_path / f"{Path(r['path']).stem}.png"))
        assert not broken, f"figures that did not load: {broken}"
        errors = browser.errors()
        assert not errors, errors
    finally:
        browser.close()
        for shot in shots:
            print(f"screenshot: {shot}")
