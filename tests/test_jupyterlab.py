"""The notebooks in a real JupyterLab, driven by headless Chromium (tests/browser_helpers.py).

JupyterLab runs from this environment on a free localhost port, with a token, on a temporary copy of
notebooks/ (so nothing in the repository is written; the notebooks' ``out_dir=".."`` is then the
temporary project folder) and with HOME, the Jupyter config, data, runtime and settings folders in
temporary folders (the user's own configuration is neither read nor touched). The test double-clicks
01_extract in the file browser, runs all cells (Run > Run All Cells), waits until every cell has run
and the kernel is idle, checks cells, figures and the absence of errors and warnings, saves with
Ctrl+S and checks that the reviewable source ``01_extract.py`` is byte for byte what it was.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from mmsae.study.notebooks import pair_notebooks

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow]
NOTEBOOK = "01_extract"
RUN_TIMEOUT = 150  # seconds for notebook 01 at the smoke profile (about 20 s on 2 cores)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(base: str, token: str, path: str, method: str = "GET"):
    req = urllib.request.Request(f"{base}{path}", method=method, headers={"Authorization": f"token {token}"},
                                 data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=10) as r:
        body = r.read()
    return json.loads(body) if body else None


def _settings(settings_dir: Path) -> None:
    """User settings of the temporary JupyterLab: no news or update check (no network, no toast over
    the page) and every cell in the page (no windowing), so the test sees all of them."""
    for plugin, values in {"@jupyterlab/apputils-extension/notification": {"fetchNews": "false",
                                                                           "checkForUpdates": False},
                           "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"}}.items():
        f = settings_dir / f"{plugin}.jupyterlab-settings"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(values))


@pytest.fixture
def lab(tmp_path):
    """A JupyterLab server on a temporary copy of notebooks/: yields (url, token, notebooks folder)."""
    missing = [m for m in ("jupyterlab", "jupytext", "ipywidgets") if importlib.util.find_spec(m) is None]
    if missing:
        msg = f"JupyterLab test needs {', '.join(missing)} (pip install -e '.[test]')"
        if os.environ.get("MMSAE_REQUIRE_BROWSER") == "1":
            pytest.fail(msg + " (MMSAE_REQUIRE_BROWSER=1 forbids skipping)", pytrace=False)
        pytest.skip(msg)
    project = tmp_path / "project"
    nbdir = project / "notebooks"
    nbdir.mkdir(parents=True)
    for src in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py")):
        shutil.copy2(src, nbdir / src.name)
    pair_notebooks(nbdir)  # what run_all.sh does: the .ipynb twins JupyterLab opens
    dirs = {k: tmp_path / k.lower() for k in ("HOME", "JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR",
                                              "JUPYTERLAB_SETTINGS_DIR", "JUPYTERLAB_WORKSPACES_DIR", "IPYTHONDIR")}
    for d in dirs.values():
        d.mkdir()
    _settings(dirs["JUPYTERLAB_SETTINGS_DIR"])
    env = {k: v for k, v in os.environ.items() if k not in ("MPLBACKEND", "JUPYTER_PATH", "JUPYTER_CONFIG_PATH")}
    env.update({k: str(v) for k, v in dirs.items()})
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    port, token = _free_port(), secrets.token_hex(16)
    log = (tmp_path / "jupyterlab.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
                             f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
                             f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={nbdir}",
                             *(["--allow-root"] if os.geteuid() == 0 else [])],  # CI containers run as root
                            cwd=nbdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        t0 = time.monotonic()
        while True:
            try:
                _api(base, token, "/api/status")
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() - t0 > 90:
                    log.flush()
                    pytest.fail("JupyterLab did not start:\n" + (tmp_path / "jupyterlab.log").read_text()[-3000:])
                time.sleep(0.5)
        yield base, token, nbdir
    finally:
        try:
            _api(base, token, "/api/shutdown", method="POST")  # stops the kernels too
            proc.wait(timeout=30)
        except Exception:  # noqa: BLE001 -- the server is going anyway
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)  # its own session: the server and its kernels
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        log.close()


def _wait(cond, timeout: float, what: str, poll: float = 0.5):
    """Poll ``cond`` until it returns something true (a page re-rendered under it counts as not yet)."""
    from selenium.common.exceptions import StaleElementReferenceException

    t0 = time.monotonic()
    while True:
        try:
            value = cond()
        except StaleElementReferenceException:
            value = None
        if value:
            return value
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


LISTING_JS = "return [...document.querySelectorAll('.jp-DirListing-item')].map(e => " \
             "[e.querySelector('.jp-DirListing-itemText').textContent, e.getAttribute('data-file-type')])"
PROMPTS_JS = "return [...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell .jp-InputPrompt')]" \
             ".map(e => e.textContent.trim())"


def _menu(driver, menu: str, item: str) -> None:
    from selenium.webdriver.common.by import By

    bar = driver.find_element(By.XPATH, f"//li[contains(@class,'lm-MenuBar-item')][.//div[normalize-space()='{menu}']]")
    bar.click()
    entry = _wait(lambda: [e for e in driver.find_elements(
        By.XPATH, f"//li[contains(@class,'lm-Menu-item')][.//div[contains(@class,'lm-Menu-itemLabel')]"
                  f"[normalize-space()='{item}']]") if e.is_displayed()], 10, f"menu item {menu} > {item}")
    entry[0].click()


def test_double_click_run_all_and_save_keeps_the_source(lab, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    base, token, nbdir = lab
    source = nbdir / f"{NOTEBOOK}.py"
    source_bytes = source.read_bytes()
    twin = nbdir / f"{NOTEBOOK}.ipynb"
    twin_mtime = twin.stat().st_mtime_ns

    browser.set_window_size(1400, 1000)
    browser.get(f"{base}/lab/tree?token={token}")

    # the file browser lists each notebook's .ipynb twin as a notebook
    listing = _wait(lambda: (lambda d: d if f"{NOTEBOOK}.ipynb" in d else None)(dict(browser.execute_script(LISTING_JS))),
                    90, "the file browser")
    for src in sorted(nbdir.glob("[0-9][0-9]_*.py")):
        assert listing.get(f"{src.stem}.ipynb") == "notebook", (src.stem, listing)

    # double-click: it opens as a notebook with cells, on the python3 kernel, no kernel dialog
    def shown_item():  # in the DOM before the shell has laid it out: wait until it has a size
        item = browser.find_element(By.XPATH, "//li[contains(@class,'jp-DirListing-item')][.//span[contains("
                                              f"@class,'jp-DirListing-itemText')][normalize-space()='{NOTEBOOK}.ipynb']]")
        return item if item.is_displayed() and item.size["height"] > 0 and item.size["width"] > 0 else None

    ActionChains(browser).double_click(_wait(shown_item, 60, "the file browser's layout")).perform()
    _wait(lambda: len(browser.execute_script(PROMPTS_JS)) > 3, 60, "the notebook's cells")
    assert not browser.find_elements(By.CSS_SELECTOR, ".jp-Dialog"), "a dialog opened with the notebook"
    n_code = len(browser.execute_script(PROMPTS_JS))
    md_cells = browser.find_elements(By.CSS_SELECTOR, ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-MarkdownCell")
    assert md_cells and n_code > 3
    _wait(lambda: any(s["path"].endswith(f"{NOTEBOOK}.ipynb") and s["kernel"]["execution_state"] == "idle"
                      for s in _api(base, token, "/api/sessions")), 60, "the kernel to start")

    # Run > Run All Cells; done when every code cell has an execution count and the kernel is idle
    _menu(browser, "Run", "Run All Cells")

    def finished():
        prompts = browser.execute_script(PROMPTS_JS)
        if browser.find_elements(By.CSS_SELECTOR, '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'):
            errors = [e.text for e in browser.find_elements(
                By.CSS_SELECTOR, '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')]
            if any("Traceback" in t or "Error" in t for t in errors):
                return "error"
        done = all(p.strip("[]:").isdigit() for p in prompts) and len(prompts) == n_code
        idle = browser.find_elements(By.CSS_SELECTOR, '.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook-ExecutionIndicator[data-status="idle"]')
        sessions = _api(base, token, "/api/sessions")
        return done and idle and all(s["kernel"]["execution_state"] == "idle" for s in sessions)

    status = _wait(finished, RUN_TIMEOUT, "all cells to run", poll=1.0)
    stderr = [e.text for e in browser.find_elements(
        By.CSS_SELECTOR, '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')]
    assert status is True, "a cell failed:\n" + "\n---\n".join(stderr)[-3000:]
    assert not stderr, "output on stderr (an error or a warning the user did not cause):\n" + "\n---\n".join(stderr)[-3000:]
    assert browser.execute_script(PROMPTS_JS)[-1] == f"[{n_code}]:", "the cells ran out of order"
    imgs = browser.find_elements(By.CSS_SELECTOR, ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output img")
    assert imgs and all(i.get_attribute("src").startswith("data:image/png") for i in imgs), "no figure shown"
    assert (nbdir.parent / "results" / "data_summary.json").is_file()  # out_dir=".": the temporary project

    # Ctrl+S in command mode saves the pair; the source comes back byte for byte
    browser.find_element(By.CSS_SELECTOR, ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-MarkdownCell").click()
    ActionChains(browser).send_keys(Keys.ESCAPE).key_down(Keys.CONTROL).send_keys("s").key_up(Keys.CONTROL).perform()

    def saved():
        if twin.stat().st_mtime_ns == twin_mtime:
            return None
        nb = json.loads(twin.read_text())
        return nb if any(c.get("outputs") for c in nb["cells"]) else None

    nb = _wait(saved, 30, f"{twin.name} to be saved")
    assert source.read_bytes() == source_bytes, "saving rewrote the reviewable source " + source.name
    outputs = [o for c in nb["cells"] for o in c.get("outputs", [])]
    assert not [o for o in outputs if o["output_type"] == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)
    assert not any(o.get("name") == "stderr" for o in outputs), "a warning in the saved notebook"
    assert not list(nbdir.glob("*.py.~*")) and sorted(p.name for p in nbdir.glob("*.py")) == sorted(
        p.name for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.py"))
