"""The notebook collection: pairs in sync, each notebook runs as a plain script, JupyterLab pairing.

(nbmake runs every .ipynb itself: `--nbmake` is in pytest's addopts and `notebooks/` in testpaths.)
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from needs import free_port

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.py"))
EXPECTED = ["01_data_pipeline", "02_forward_process_and_schedules", "03_unet", "04_train_ddpm",
            "05_evaluating_samples", "06_sampling", "07_faster_sampling_and_guidance", "08_flow_matching",
            "09_experiments", "10_conditional_generation", "11_fashion_mnist"]


def test_the_eleven_pairs_exist():
    assert [p.stem for p in NOTEBOOKS] == EXPECTED
    for py in NOTEBOOKS:
        assert py.with_suffix(".ipynb").is_file(), f"{py.name} has no .ipynb twin"


def test_pairs_are_in_sync(tmp_path):
    """What CI's pairing check does: regenerate every .ipynb from its .py with `jupytext --update`
    (outputs kept) and require no difference from the committed file (on a copy, so a failing run
    does not 'fix' the working tree)."""
    work = tmp_path / "repo"
    shutil.copytree(REPO / "notebooks", work / "notebooks", ignore=shutil.ignore_patterns("figures"))
    shutil.copy(REPO / "jupytext.toml", work / "jupytext.toml")
    py_files = [str(work / "notebooks" / p.name) for p in NOTEBOOKS]
    r = subprocess.run([sys.executable, "-m", "jupytext", "--to", "ipynb", "--update", *py_files],
                       cwd=work, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    for p in NOTEBOOKS:
        committed = p.with_suffix(".ipynb").read_text()
        regenerated = (work / "notebooks" / p.with_suffix(".ipynb").name).read_text()
        assert regenerated == committed, (f"{p.name} and its .ipynb disagree: run "
                                          f"`jupytext --to ipynb --update notebooks/{p.name}`")


def test_committed_notebooks_carry_real_outputs():
    """Each .ipynb holds the outputs of a real run (not tiny): a run record, images, no errors."""
    for p in NOTEBOOKS:
        nb = json.loads(p.with_suffix(".ipynb").read_text())
        first = "".join(nb["cells"][0]["source"])
        assert "Run record:" in first and "not executed yet" not in first, f"{p.stem}: no run record"
        assert "preset `tiny`" not in first, f"{p.stem}: committed outputs come from a tiny run"
        outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
        assert not [o for o in outputs if o.get("output_type") == "error"], f"{p.stem}: error output"
        assert any("image/png" in o.get("data", {}) for o in outputs), f"{p.stem}: no figure in the outputs"
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        if p.stem not in AWAITING_REEXECUTION:  # a cell added since the last execution has no output yet
            assert all(c.get("execution_count") for c in code), f"{p.stem}: not every code cell was executed"


WITH_EXERCISES = sorted(p.stem for p in (REPO / "notebooks").glob("[0-9][0-9]_*.py"))


@pytest.mark.parametrize("notebook", WITH_EXERCISES)
def test_exercises_end_the_notebook_with_collapsed_solutions_that_ran(notebook):
    """The last section is "Exercises"; each solution is a code cell collapsed in JupyterLab (Jupyter's
    source_hidden metadata, kept by jupytext.toml) whose outputs are in the committed notebook."""
    cells = json.loads((REPO / "notebooks" / f"{notebook}.ipynb").read_text())["cells"]
    start = max(i for i, c in enumerate(cells) if c["cell_type"] == "markdown" and "## Exercises" in "".join(c["source"]))
    solutions = [c for c in cells[start + 1:] if c["cell_type"] == "code"]
    assert len(solutions) >= 2, f"{notebook}: fewer than two solutions"
    for c in solutions:
        assert c["metadata"].get("jupyter", {}).get("source_hidden") is True, f"{notebook}: a solution is not collapsed"
        assert c.get("outputs"), f"{notebook}: a solution has no output"


def _run_notebooks_tool():
    spec = importlib.util.spec_from_file_location("run_notebooks", REPO / "tools" / "run_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_outputs_show_each_progress_bar_once():
    """Stream outputs are stored as a terminal shows them (tools/run_notebooks.py merges them and resolves
    carriage returns): the docs site renders one final bar per loop, not every state it passed through."""
    for p in NOTEBOOKS:
        nb = json.loads(p.with_suffix(".ipynb").read_text())
        for i, cell in enumerate(nb["cells"]):
            streams = [o for o in cell.get("outputs", []) if o["output_type"] == "stream"]
            assert not any("\r" in "".join(o["text"]) for o in streams), f"{p.stem} cell {i}: unresolved \\r"
            names = [o.get("name") for o in cell.get("outputs", [])]
            assert all(a is None or a != b for a, b in zip(names, names[1:])), f"{p.stem} cell {i}: unmerged streams"


# Notebooks whose committed outputs were made by code that has changed since (the samplers' time grid,
# the run layer, the quick checks): listed here, and only here, until the tutorials' next edition
# re-executes them on the final code and empties this set. A listed notebook whose record is valid
# again fails (strict), so the set cannot outlive its reason.
AWAITING_REEXECUTION = set(EXPECTED)


@pytest.mark.parametrize("notebook", [
    pytest.param(nb, marks=pytest.mark.xfail(strict=True, reason=f"{nb}: awaiting re-execution on the current "
                                                                 f"code (`python tools/run_notebooks.py {nb[:2]}`)"))
    if nb in AWAITING_REEXECUTION else nb for nb in EXPECTED])
def test_run_record_names_the_commit_whose_code_made_the_outputs(notebook):
    """The run record's `commit <hash>`: the notebook's own code and that of helpers/ and notebooks/tutorial/
    are unchanged since that commit (ASTs without docstrings, so prose edits alone do not count)."""
    tool = _run_notebooks_tool()
    py = REPO / "notebooks" / f"{notebook}.py"
    record = tool.RECORD.search(py.read_text())
    assert record, f"{notebook}: no run record"
    commit = tool.RECORD_COMMIT.search(record.group(0))
    assert commit, f"{notebook}: its run record names no commit: re-execute it with `python tools/run_notebooks.py {notebook[:2]}`"
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("no git history here: the run record's commit cannot be checked")
    try:
        changed = tool.files_changed_since(commit.group(1), tool.code_paths(py))
    except subprocess.CalledProcessError:
        pytest.skip(f"commit {commit.group(1)} is not in this clone's history (a shallow clone?)")
    assert not changed, (f"{notebook}: the code of {', '.join(changed)} changed since commit {commit.group(1)}, "
                         f"which made its outputs: re-execute it with `python tools/run_notebooks.py {notebook[:2]}`")


def test_code_fingerprint_ignores_prose_but_not_code():
    tool = _run_notebooks_tool()
    base = 'def f(x):\n    """Doc."""\n    return x + 1  # why\n'
    assert tool.code_fingerprint(base) == tool.code_fingerprint('def f(x):\n    """Other doc."""\n    return x + 1\n')
    assert tool.code_fingerprint(base) == tool.code_fingerprint("# %% [markdown]\n# prose\ndef f(x):\n    return x + 1\n")
    assert tool.code_fingerprint(base) != tool.code_fingerprint('def f(x):\n    """Doc."""\n    return x + 2\n')


def test_jupyter_server_opens_a_py_as_a_notebook_and_saves_the_pair(tmp_path):
    """JupyterLab with Jupytext: the contents API serves a paired .py as a notebook, and saving it
    writes both files, which stay in sync."""
    work = tmp_path / "lab"
    (work / "notebooks").mkdir(parents=True)
    name = "02_forward_process_and_schedules"
    for suffix in (".py", ".ipynb"):
        shutil.copy(REPO / "notebooks" / f"{name}{suffix}", work / "notebooks" / f"{name}{suffix}")
    shutil.copy(REPO / "jupytext.toml", work / "jupytext.toml")
    port, token = free_port(), "test-token"
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "server", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}", "--allow-root"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg")})
    base = f"http://127.0.0.1:{port}/api/contents/notebooks/{name}.py"
    headers = {"Authorization": f"token {token}", "Content-Type": "application/json"}
    try:
        model = None
        for _ in range(120):
            try:
                with urllib.request.urlopen(urllib.request.Request(base, headers=headers), timeout=5) as resp:
                    model = json.loads(resp.read())
                break
            except OSError:
                if server.poll() is not None:
                    break
                time.sleep(0.5)
        assert model is not None, "jupyter server did not answer: " + server.stdout.read().decode()[-3000:] \
            if server.poll() is not None else "jupyter server did not answer in 60 s"
        assert model["type"] == "notebook", f"the .py opened as {model['type']!r}: is Jupytext's contents manager on?"
        cells = model["content"]["cells"]
        assert cells[0]["cell_type"] == "markdown" and any(c["cell_type"] == "code" for c in cells)

        # Edit a markdown cell in "JupyterLab" and save through the API.
        cells[1]["source"] = cells[1]["source"] + "\n\nEdited in JupyterLab."
        body = json.dumps({"type": "notebook", "format": "json", "content": model["content"]}).encode()
        req = urllib.request.Request(base, data=body, headers=headers, method="PUT")
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert resp.status in (200, 201)
    finally:
        server.terminate()
        server.wait(timeout=30)

    py_text = (work / "notebooks" / f"{name}.py").read_text()
    nb = json.loads((work / "notebooks" / f"{name}.ipynb").read_text())
    assert "Edited in JupyterLab." in py_text
    assert any("Edited in JupyterLab." in "".join(c["source"]) for c in nb["cells"]), "the .ipynb was not updated"
    # Both files still describe the same notebook: regenerating the .ipynb from the .py changes nothing.
    before = (work / "notebooks" / f"{name}.ipynb").read_text()
    r = subprocess.run([sys.executable, "-m", "jupytext", "--to", "ipynb", "--update", f"notebooks/{name}.py"],
                       cwd=work, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads((work / "notebooks" / f"{name}.ipynb").read_text())["cells"] == json.loads(before)["cells"]
