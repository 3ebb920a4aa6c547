"""The docs site: `mkdocs build --strict`, then the built site served on localhost and opened in
headless Chromium (Debian's package) through Playwright: images load, no console errors.

Screenshots are kept in artifacts/docs/ (ignored by git). Skipped, saying why, when the docs extra
or Chromium is missing outside CI; in CI (`CI` set) a missing piece is a failure.
"""

import functools
import http.server
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = REPO / "artifacts" / "docs"


def _need(condition: bool, why: str):
    if not condition:
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    _need(shutil.which("mkdocs") is not None or _has_module("mkdocs"), "the docs extra is not installed: pip install -e '.[docs]'")
    out = tmp_path_factory.mktemp("site")
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=REPO,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    return out


def _has_module(name):
    import importlib.util

    return importlib.util.find_spec(name) is not None


def test_every_notebook_has_a_page_with_its_figures(site):
    for nb in sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        page = site / "notebooks" / nb.stem / "index.html"
        assert page.is_file(), f"no page for {nb.name}"
        html = page.read_text()
        assert "data:image/png;base64" in html, f"the page of {nb.name} shows no figure"
        assert "Run record:" in html


def test_api_reference_lists_every_public_function(site):
    import importlib
    import inspect
    import pkgutil

    import helpers

    html = (site / "api" / "index.html").read_text()
    for info in pkgutil.iter_modules(helpers.__path__):  # every module of the package
        module = importlib.import_module(f"helpers.{info.name}")
        for name, obj in vars(module).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            if inspect.isfunction(obj) or inspect.isclass(obj):
                assert f"{module.__name__}.{name}" in html, f"{module.__name__}.{name} is missing from the API page"


@pytest.fixture(scope="module")
def server(site):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *a, **k: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


# External hosts the pages may reference (the MathJax CDN): CI has no internet, so a failed
# request *to them* is not a page error. Everything served from localhost must load.
EXTERNAL_OK = ("cdn.jsdelivr.net",)


@pytest.mark.parametrize("path, images", [
    ("/", ["samples", "training curve"]),
    ("/notebooks/04_train_ddpm/", ["figure"]),
])
def test_pages_render_in_headless_chromium(server, path, images):
    _need(Path(CHROMIUM).is_file(), f"Chromium not found at {CHROMIUM}: apt-get install chromium")
    _need(_has_module("playwright"), "playwright is not installed: pip install -e '.[docs]'")
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    errors, failed = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: failed.append(r.url))
        page.goto(server + path, wait_until="load")
        page.wait_for_timeout(500)
        imgs = page.eval_on_selector_all(
            "img", "els => els.map(e => ({alt: e.alt, src: e.src.slice(0, 80), w: e.naturalWidth, done: e.complete}))")
        page.screenshot(path=str(ARTIFACTS / f"{path.strip('/').replace('/', '_') or 'home'}.png"), full_page=True)
        browser.close()

    local_failures = [u for u in failed if not any(h in u for h in EXTERNAL_OK)]
    assert not local_failures, f"requests that failed: {local_failures}"
    real_errors = [e for e in errors if not any(h in e for h in EXTERNAL_OK)
                   and "ERR_NAME_NOT_RESOLVED" not in e and "ERR_INTERNET_DISCONNECTED" not in e]
    assert not real_errors, f"console errors: {real_errors}"
    assert imgs, "no images on the page"
    broken = [i for i in imgs if not i["w"]]
    assert not broken, f"images that did not load: {broken}"
    alts = " ".join(i["alt"].lower() for i in imgs)
    for word in images:
        if word != "figure":
            assert word in alts, f"no image about {word!r} on {path} (alts: {alts})"
    if "figure" in images:
        assert sum(i["src"].startswith("data:image/png") for i in imgs) >= 3, "the notebook's figures are missing"
