"""Execute the tutorial notebooks for real and commit-ready: outputs in the .ipynb, a run record on top.

    python tools/run_notebooks.py                      # all eleven, at the backend's preset (cpu here)
    python tools/run_notebooks.py 04 05 --preset cpu   # some of them

Each notebook is executed from its `.py` (the source of truth) in a fresh kernel with
TUTORIAL_PRESET set; its first cell's "Run record" line is rewritten with the preset, the machine,
the commit of the code that ran and the wall time; then `jupytext --update` writes the
`.ipynb` (outputs kept), so the pair is in sync exactly as CI checks it. Consecutive stream outputs
are merged and carriage returns resolved, as a terminal shows them, so a progress bar leaves its
final state, not hundreds. Later notebooks reuse the run notebook 04 trained (runs/tutorial-<preset>/);
delete it to train again.

Commit the code first: a notebook whose code, or the code of `helpers/` or `notebooks/tutorial/`,
differs from HEAD is refused, since its record could not name the commit that produced it.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

RECORD = re.compile(r"^# > \*\*Run record:\*\*.*$", re.M)
RECORD_COMMIT = re.compile(r"\bcommit ([0-9a-f]{7,40})\b")


def code_fingerprint(source: str) -> str:
    """The Python code of a file without comments or docstrings (a dump of its AST), so that an edit of
    prose alone (a notebook's markdown cells are comments) leaves the fingerprint unchanged."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body \
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


def code_paths(py: Path) -> list[Path]:
    """The files whose code a notebook's outputs depend on: its own .py, helpers/ and notebooks/tutorial/."""
    return [py, *sorted((REPO / "helpers").glob("*.py")), *sorted((REPO / "notebooks" / "tutorial").glob("*.py"))]


def files_changed_since(commit: str, paths: list[Path]) -> list[str]:
    """The paths (relative to the repository) whose code differs between `commit` and the working tree;
    raises CalledProcessError when git or the commit is not available."""
    changed = []
    for path in paths:
        rel = path.resolve().relative_to(REPO).as_posix()
        old = subprocess.run(["git", "show", f"{commit}:{rel}"], cwd=REPO, capture_output=True, text=True)
        if old.returncode != 0:
            subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=REPO, check=True,
                           capture_output=True)
            changed.append(rel)  # the commit exists, the file did not
        elif code_fingerprint(old.stdout) != code_fingerprint(path.read_text()):
            changed.append(rel)
    return changed


def head_commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, check=True, capture_output=True,
                          text=True).stdout.strip()


def _minutes(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s:02d} s" if m else f"{s} s"


def execute(py: Path, preset: str, machine: str, timeout: int, commit: str) -> float:
    import jupytext
    from nbclient import NotebookClient
    from nbconvert.preprocessors import CoalesceStreamsPreprocessor

    nb = jupytext.read(py)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                            resources={"metadata": {"path": str(py.parent)}})
    t0 = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - t0

    CoalesceStreamsPreprocessor().preprocess(nb, {})
    record = (f"# > **Run record:** the outputs below are from a real run at preset `{preset}` on {machine}, "
              f"commit {commit}; the notebook took {_minutes(seconds)} "
              f"(`python tools/run_notebooks.py`). `TUTORIAL_PRESET=tiny` runs it in seconds.")
    text = py.read_text()
    if not RECORD.search(text):
        raise SystemExit(f"{py.name}: its first cell has no '> **Run record:**' line to fill in.")
    py.write_text(RECORD.sub(record, text, count=1))
    nb.cells[0].source = jupytext.read(py).cells[0].source
    for cell in nb.cells:  # volatile metadata stays out of the committed notebook
        cell.metadata.pop("execution", None)
    jupytext.write(nb, py.with_suffix(".ipynb"), fmt="ipynb")
    subprocess.run([sys.executable, "-m", "jupytext", "--to", "ipynb", "--update", "--quiet", str(py)],
                   check=True, cwd=REPO)
    return seconds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("notebooks", nargs="*", help="numbers or names (default: all)")
    p.add_argument("--preset", default=None, help="default: the backend's (cpu without an accelerator)")
    p.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    args = p.parse_args(argv)

    import helpers  # noqa: F401
    from helpers.config import PRESETS, default_preset_name
    from helpers.environment import machine_description

    preset = args.preset or default_preset_name()
    if preset not in PRESETS:
        p.error(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
    os.environ["TUTORIAL_PRESET"] = preset
    all_nbs = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.py"))
    chosen = [nb for nb in all_nbs if not args.notebooks or any(nb.stem.startswith(a) for a in args.notebooks)]
    if not chosen:
        p.error(f"no notebook matches {args.notebooks}")
    commit = head_commit()
    dirty = sorted({rel for py in chosen for rel in files_changed_since(commit, code_paths(py))})
    if dirty:
        p.error(f"the code of {', '.join(dirty)} differs from commit {commit}: commit it first, so that each "
                f"run record names the commit whose code produced its outputs")
    machine = machine_description()
    for py in chosen:
        print(f"executing {py.name} at preset {preset} ...", flush=True)
        seconds = execute(py, preset, machine, args.timeout, commit)
        print(f"  done in {_minutes(seconds)}", flush=True)
    return 0


if __name__ == "__main__":
    from helpers.environment import tune_for_cpu

    tune_for_cpu()  # the notebooks' kernels inherit its environment (huge pages included)
    sys.exit(main())
