"""notebooks/tutorial/: the notebooks' run reuse must not silently ignore changed settings."""

import sys
from pathlib import Path

import pytest

import helpers  # noqa: F401
from helpers.config import get_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "notebooks"))
from tutorial import ensure_run  # noqa: E402


def test_a_run_with_other_settings_is_refused_and_left_alone(tmp_path):
    run = tmp_path / "experiments-tiny" / "baseline"
    run.mkdir(parents=True)
    saved = get_config("tiny").to_json()
    (run / "config.json").write_text(saved)
    with pytest.raises(ValueError, match=r"max_steps: 8 there, 9 now.*Delete or rename"):
        ensure_run(run, get_config("tiny", max_steps=9))
    with pytest.raises(ValueError, match=r"hidden_dims"):  # model fields are compared too
        ensure_run(run, get_config("tiny", hidden_dims=(4, 8)))
    assert (run / "config.json").read_text() == saved
    assert sorted(p.name for p in run.iterdir()) == ["config.json"]


def test_a_run_with_a_time_budget_records_its_plan_and_is_reused(tmp_path, tfds_dir, mnist_archives, capsys):
    import json
    import re

    cfg = get_config("tiny", minutes=0.05)
    run = tmp_path / "budget"
    _, _, summary = ensure_run(run, cfg, progress=False)
    said = re.search(r"timed one step at \d+ ms on this machine: ([\d,]+) steps fill", capsys.readouterr().out)
    assert said, "the run should say how it planned its steps"
    planned = json.loads((run / "plan.json").read_text())["total_steps"]
    # the plan written before training is the one it announced, in whole chunks, and the run trained all of it
    assert planned == int(said.group(1).replace(",", "")) and planned % cfg.log_every == 0
    assert summary["steps"] == planned
    # asking again for the same budget reuses the run: the config is unchanged, the plan is in plan.json
    _, _, again = ensure_run(run, cfg, progress=False)
    assert again == summary
