"""Every notebook at the `paper` preset, the default wherever JAX sees a GPU, as a quick check on the CPU
(tests/paper_path.py): a notebook that only works at `cpu` or `tiny` fails here, not on a learner's GPU."""

import subprocess
import sys

import pytest
from paper_path import REPO, paper_env

NOTEBOOKS = sorted(p.stem for p in (REPO / "notebooks").glob("[0-9][0-9]_*.py"))


@pytest.fixture(scope="module")
def paper_runs(tmp_path_factory):
    return tmp_path_factory.mktemp("paper")  # one folder: notebooks 05-08 reuse the run notebook 04 trains


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_the_notebook_runs_at_paper(notebook, paper_runs):
    r = subprocess.run([sys.executable, str(REPO / "notebooks" / f"{notebook}.py")], cwd=paper_runs,
                       env=paper_env(paper_runs), capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    assert "preset 'paper'" in r.stdout
