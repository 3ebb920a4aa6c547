"""helpers.tutorial: the notebooks' run reuse must not silently ignore changed settings."""

import pytest

import helpers  # noqa: F401
from helpers.config import get_config
from helpers.tutorial import ensure_run


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
