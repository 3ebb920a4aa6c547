"""JupyterLab as the README starts it: double-clicking a notebook's .py opens Jupytext's notebook view
(cells), not the text editor. The setting ships with the install, editable too (jupyter/overrides.json,
installed by hatchling's shared-data to <prefix>/share/jupyter/lab/settings/overrides.d/, where JupyterLab
reads packages' setting overrides). A real `jupyter lab` server runs with empty user settings and is
driven by headless Chromium through Playwright.
"""

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from needs import free_port, need_chromium

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "artifacts" / "docs"  # screenshots, ignored by git
NOTEBOOK = "01_data_pipeline.py"


def test_the_install_ships_the_notebook_view_as_default():
    installed = Path(sys.prefix) / "share" / "jupyter" / "lab" / "settings" / "overrides.d" / "mnist-diffusion-jax.json"
    assert installed.is_file(), f"{installed} is missing: reinstall with pip install -e '.[test]'"
    viewers = json.loads(installed.read_text())["@jupyterlab/docmanager-extension:plugin"]["defaultViewers"]
    assert viewers["python"] == "Jupytext Notebook"


@pytest.fixture(scope="module")
def jupyter_lab(tmp_path_factory):
    """`jupyter lab` on a free local port with fresh user config, settings and workspaces."""
    need_chromium()
    home = tmp_path_factory.mktemp("jupyter")
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(home / "config"), JUPYTER_RUNTIME_DIR=str(home / "runtime"),
               JUPYTERLAB_SETTINGS_DIR=str(home / "settings"), JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"))
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
         "--IdentityProvider.token=test", f"--ServerApp.root_dir={REPO}", "--allow-root"],
        env=env, stdout=subprocess.DEVNULL, stderr=open(home / "server.log", "w"))
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/api/status?token=test", timeout=2)
                break
            except OSError:
                assert server.poll() is None, f"jupyter lab exited: {(home / 'server.log').read_text()[-3000:]}"
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:  # a kernel still shutting down
            server.kill()


def test_double_clicking_a_notebook_py_opens_the_notebook_view(jupyter_lab, browser):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{jupyter_lab}/lab/tree/notebooks?token=test", wait_until="load")
    item = page.locator(".jp-DirListing-itemText", has_text=NOTEBOOK)
    item.first.wait_for(timeout=60_000)
    item.first.dblclick()
    page.wait_for_function("document.querySelectorAll('.jp-NotebookPanel .jp-Cell').length > 5", timeout=60_000)
    editors = page.locator(".jp-FileEditor").count()
    cells = page.locator(".jp-NotebookPanel .jp-Cell").count()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "jupyterlab.png"), full_page=True)
    page.close()
    assert cells > 5, f"the notebook view shows {cells} cells"
    assert editors == 0, "the .py also opened in the text editor"
