"""Notebooks 06-11 at the quick `paper` preset (tests/test_paper_notebooks.py has 01-05 and says why)."""

import pytest
from paper_path import NOTEBOOKS, run_notebook_at_paper


@pytest.fixture(scope="module")
def paper_runs(tmp_path_factory):
    return tmp_path_factory.mktemp("paper")  # notebook 06 trains notebook 04's run here; 07 and 08 reuse it


@pytest.mark.parametrize("notebook", NOTEBOOKS[5:])
def test_the_notebook_runs_at_paper(notebook, paper_runs):
    run_notebook_at_paper(notebook, paper_runs)


def test_the_two_files_run_every_notebook():
    assert len(NOTEBOOKS) == 11 and NOTEBOOKS[4].startswith("05") and NOTEBOOKS[5].startswith("06")
