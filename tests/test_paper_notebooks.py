"""Every notebook at the `paper` preset, the default wherever JAX sees a GPU, as a quick check on the CPU
(tests/paper_path.py): a notebook that only works at `cpu` or `tiny` fails here, not on a learner's GPU.
Run as plain scripts with no display, they also check that path: figures saved as files. Notebooks 01-05
here, 06-11 in tests/test_paper_notebooks_later.py (two files, so that pytest-xdist runs them side by side)."""

import pytest
from paper_path import NOTEBOOKS, run_notebook_at_paper


@pytest.fixture(scope="module")
def paper_runs(tmp_path_factory):
    return tmp_path_factory.mktemp("paper")  # one folder: notebook 05 reuses the run notebook 04 trains


@pytest.mark.parametrize("notebook", NOTEBOOKS[:5])
def test_the_notebook_runs_at_paper(notebook, paper_runs):
    run_notebook_at_paper(notebook, paper_runs)
