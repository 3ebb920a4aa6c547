"""The docs site: `mkdocs build --strict`, then the built site served on localhost and opened in
headless Chromium (Debian's package) through Playwright with every request to another host refused,
as on a machine without internet: images load, the math renders (MathJax is served with the site),
no console errors.

Screenshots are kept in artifacts/docs/ (ignored by git). Skipped, saying why, when the docs extra
or Chromium is missing outside CI; in CI (`CI` set) a missing piece is a failure.
"""

import functools
import http.server
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from needs import has_module, need

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "artifacts" / "docs"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    need(has_module("mkdocs"), "the docs extra is not installed: pip install -e '.[docs]'")
    out = tmp_path_factory.mktemp("site")
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=REPO,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    return out


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


def test_results_and_performance_pages_are_short_and_history_is_a_table():
    """Results and Performance: a summary table, then the method, in about 1,000 words each; earlier runs
    live in history.md as one dated table."""
    for page in ("results.md", "performance.md"):
        text = (REPO / "docs" / page).read_text()
        words = len(re.findall(r"\S+", text))
        assert words <= 1100, f"docs/{page} has {words} words (about 1,000 at most)"
        assert re.search(r"^\|.*\|$", text, re.M), f"docs/{page} has no summary table"
    history = (REPO / "docs" / "history.md").read_text()
    rows = [line for line in history.splitlines() if re.match(r"^\| \d{4}-\d{2}-\d{2} ", line)]
    assert len(rows) >= 10, "history.md: the earlier runs as dated table rows"


def test_dates_live_only_on_the_history_page():
    """No dates in the notebooks' text (run records included), the README, the other docs pages or the code:
    when something was measured belongs to docs/history.md."""
    pages = [*(REPO / "notebooks").glob("[0-9][0-9]_*.py"), REPO / "README.md",
             *(p for p in (REPO / "docs").glob("*.md") if p.name != "history.md"),
             *(REPO / "helpers").glob("*.py"), *(REPO / "scripts").glob("*.py"), *(REPO / "tools").glob("*.py")]
    dated = [f"{p.relative_to(REPO)}: {m.group(0)}" for p in pages
             for m in re.finditer(r"\b20\d{2}-[01]\d-[0-3]\d\b", p.read_text())]
    assert not dated, f"dates outside docs/history.md: {dated}"


def test_every_cited_paper_is_on_the_references_page_with_a_link():
    """Each arXiv link in the notebooks, README and docs is listed on docs/references.md, and the page names and
    links the reference tutorial."""
    refs = (REPO / "docs" / "references.md").read_text()
    assert "Training a Diffusion Model on MNIST" in refs
    cited = set()
    for path in [*(REPO / "notebooks").glob("[0-9][0-9]_*.py"), REPO / "README.md", *(REPO / "docs").glob("*.md")]:
        cited |= set(re.findall(r"arxiv\.org/abs/(\d{4}\.\d{4,5})", path.read_text()))
    missing = sorted(c for c in cited if f"arxiv.org/abs/{c}" not in refs)
    assert not missing, f"cited but not on the references page: {missing}"
    for py in sorted((REPO / "notebooks").glob("[0-9][0-9]_*.py")):
        text = py.read_text()
        if re.search(r"et al\.|[A-Z][a-z]+ & [A-Z][a-z]+,? \(?20\d\d", text):
            assert "](https://" in text, f"{py.stem} cites papers but links none"


@pytest.fixture(scope="module")
def server(site):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *a, **k: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


REMOTE = re.compile(r"""<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)=["'](?:https?:)?//""", re.I)


def test_site_loads_nothing_from_the_internet(site):
    """Scripts, styles and images all come with the site: `mkdocs serve` works offline."""
    remote = {str(p.relative_to(site)): m.group(0) for p in site.rglob("*.html") for m in [REMOTE.search(p.read_text())] if m}
    assert not remote, f"pages that load something from another host: {remote}"
    assert (site / "javascripts" / "mathjax" / "tex-mml-chtml.js").is_file(), "MathJax is not served with the site"


@pytest.mark.parametrize("path, images, math", [
    ("/", ["samples", "training curve"], False),
    ("/notebooks/02_forward_process_and_schedules/", ["figure"], True),
    ("/notebooks/04_train_ddpm/", ["figure"], True),
    ("/notebooks/06_sampling/", ["figure"], True),
])
def test_pages_render_offline_in_headless_chromium(server, browser, path, images, math):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    errors, failed, refused = [], [], []
    page = browser.new_page(viewport={"width": 1280, "height": 900})

    def offline(route):  # as without internet: only the site's own server answers
        if route.request.url.startswith(server):
            return route.continue_()
        refused.append(route.request.url)
        return route.abort("internetdisconnected")

    page.route("**/*", offline)
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: failed.append(r.url))
    page.goto(server + path, wait_until="load")
    if math:
        page.wait_for_selector("mjx-container", timeout=30_000)  # MathJax typeset the page's formulas
    page.wait_for_timeout(500)
    imgs = page.eval_on_selector_all(
        "img", "els => els.map(e => ({alt: e.alt, src: e.src.slice(0, 80), w: e.naturalWidth, done: e.complete}))")
    raw_tex = page.evaluate(  # TeX left as text in a markdown cell or page (code cells may show TeX strings)
        "() => [...document.querySelectorAll('.jp-RenderedMarkdown, .arithmatex')].some(e => /\\\\(bar|frac|sqrt)/.test(e.innerText))")
    page.screenshot(path=str(ARTIFACTS / f"{path.strip('/').replace('/', '_') or 'home'}.png"), full_page=True)
    page.close()

    assert not refused, f"the page asked another host for: {refused}"
    assert not failed, f"requests that failed: {failed}"
    assert not errors, f"console errors: {errors}"
    assert not raw_tex, "TeX left unrendered on the page"
    assert imgs, "no images on the page"
    broken = [i for i in imgs if not i["w"]]
    assert not broken, f"images that did not load: {broken}"
    alts = " ".join(i["alt"].lower() for i in imgs)
    for word in images:
        if word != "figure":
            assert word in alts, f"no image about {word!r} on {path} (alts: {alts})"
    if "figure" in images:
        assert sum(i["src"].startswith("data:image/png") for i in imgs) >= 3, "the notebook's figures are missing"
