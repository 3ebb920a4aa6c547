"""The main job end to end at the tiny preset: files written, sampling, resume after SIGKILL, bad input."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "scripts"), str(REPO / "benchmarks")]  # the scripts, imported to call main()


def _env(tfds_dir):
    return {**os.environ, "TFDS_DATA_DIR": str(tfds_dir), "JAX_PLATFORMS": "cpu"}


def _train(args, tfds_dir, archives, **kw):
    cmd = [sys.executable, str(REPO / "scripts" / "train.py"), "--manual-dir", str(archives), "--no-progress", *args]
    return subprocess.run(cmd, env=_env(tfds_dir), capture_output=True, text=True, timeout=600, **kw)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tfds_dir, mnist_archives):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    r = _train(["--preset", "tiny", "--out", str(out)], tfds_dir, mnist_archives)
    assert r.returncode == 0, r.stderr[-3000:]
    return out, r.stdout


def test_tiny_run_writes_every_file(tiny_run):
    out, stdout = tiny_run
    for name in ("config.json", "plan.json", "history.csv", "history.json", "training_curve.png", "samples.png",
                 "samples.npy", "summary.json"):
        assert (out / name).is_file(), name
    assert any((out / "checkpoints").iterdir())
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["preset"] == "tiny" and cfg["model"]["hidden_dims"] == [8, 16]
    hist = json.loads((out / "history.json").read_text())
    assert hist["step"] == list(range(8)) and len(hist["loss"]) == 8 and all(np.isfinite(hist["loss"]))
    assert set(hist) >= {"step", "epoch", "loss", "lr", "images_per_s"}
    x = np.load(out / "samples.npy")
    assert x.shape == (16, 32, 32, 1) and x.min() >= -1 and x.max() <= 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 8 and summary["images_per_s"] > 0
    assert "done: 8 steps" in stdout
    assert json.loads((out / "plan.json").read_text())["total_steps"] == 8


def test_the_same_command_gives_the_same_run(tiny_run, tmp_path, tfds_dir, mnist_archives):
    """A fixed plan: the same command and seed give the same losses and the same samples, bit for bit."""
    out, _ = tiny_run
    again = tmp_path / "again"
    r = _train(["--preset", "tiny", "--out", str(again)], tfds_dir, mnist_archives)
    assert r.returncode == 0, r.stderr[-3000:]
    first, second = (json.loads((d / "history.json").read_text()) for d in (out, again))
    assert second["loss"] == first["loss"] and second["lr"] == first["lr"]
    np.testing.assert_array_equal(np.load(again / "samples.npy"), np.load(out / "samples.npy"))
    other = tmp_path / "other-seed"
    assert _train(["--preset", "tiny", "--seed", "7", "--out", str(other), "--no-evaluate"], tfds_dir,
                  mnist_archives).returncode == 0
    assert json.loads((other / "history.json").read_text())["loss"] != first["loss"]  # the seed does matter


def test_sample_script_reads_the_run(tiny_run, tmp_path):
    out, _ = tiny_run
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "sample.py"), str(out), "--n", "6", "--steps", "4",
                        "--eta", "0.5", "--trajectory", "--out", str(tmp_path / "s")],
                       capture_output=True, text=True, timeout=300, env=_env(out))
    assert r.returncode == 0, r.stderr[-2000:]
    assert np.load(tmp_path / "s.npy").shape == (6, 32, 32, 1)
    for suffix in (".png", "-trajectory.png", "-trajectory.gif"):
        assert (tmp_path / f"s{suffix}").stat().st_size > 0
    bad = subprocess.run([sys.executable, str(REPO / "scripts" / "sample.py"), str(out), "--n", "2",
                          "--guidance-scale", "3", "--out", str(tmp_path / "g")],
                         capture_output=True, text=True, timeout=300, env=_env(out))
    assert bad.returncode == 2 and "needs a class-conditional run" in bad.stderr, bad.stderr[-2000:]
    off = subprocess.run([sys.executable, str(REPO / "scripts" / "sample.py"), str(out), "--n", "2",
                          "--autoguidance-scale", "0.5", "--out", str(tmp_path / "a")],
                         capture_output=True, text=True, timeout=300, env=_env(out), check=False)
    assert off.returncode == 2 and "1 turns autoguidance off" in off.stderr, off.stderr[-2000:]


def test_sample_script_reconstructs_any_ema_length(tiny_run, tmp_path, capsys):
    """Post-hoc EMA: the tiny run's snapshots (steps 4 and 8) give the model and the guide other EMA lengths."""
    import sample

    out, _ = tiny_run
    common = [str(out), "--n", "4", "--steps", "2"]
    assert sample.main([*common, "--out", str(tmp_path / "own")]) == 0
    assert sample.main([*common, "--ema-length", "0.07", "--guide-ema-length", "0.1", "--out", str(tmp_path / "p")]) == 0
    said = capsys.readouterr().out
    assert "model: post-hoc EMA 0.07 at step 8 from 4 snapshots" in said and "guide: post-hoc EMA 0.1 at step 4" in said
    assert not np.allclose(np.load(tmp_path / "own.npy"), np.load(tmp_path / "p.npy"), atol=1e-4)
    for flags, message in ((["--ema-length", "0.5"], "must lie in (0, 0.289)"),
                           (["--guide-ema-length", "0.1", "--guide-step", "6"], "not at 6")):
        with pytest.raises(SystemExit) as e:
            sample.main([*common, *flags, "--out", str(tmp_path / "bad")])
        err = capsys.readouterr().err
        assert e.value.code == 2 and message in err and "Traceback" not in err, (flags, err)


def test_a_flow_matching_run_trains_and_samples_with_euler_and_heun(tmp_path, tfds_dir, mnist_archives):
    out = tmp_path / "flow"
    r = _train(["--preset", "tiny", "--objective", "flow", "--out", str(out), "--no-evaluate"], tfds_dir,
               mnist_archives)  # the objective brings its own prediction, weighting and sampler
    assert r.returncode == 0, r.stderr[-3000:]
    saved = json.loads((out / "config.json").read_text())
    assert (saved["objective"], saved["prediction"], saved["loss_weighting"], saved["sampler"]) == ("flow", "v", "uniform", "heun")
    assert np.isfinite(json.loads((out / "history.json").read_text())["loss"]).all()
    sample = [sys.executable, str(REPO / "scripts" / "sample.py"), str(out), "--n", "4"]
    r = subprocess.run(sample + ["--sampler", "euler", "--steps", "3", "--trajectory", "--out", str(tmp_path / "e")],
                       capture_output=True, text=True, timeout=300, env=_env(tfds_dir))
    assert r.returncode == 0, r.stderr[-2000:]
    x = np.load(tmp_path / "e.npy")
    assert x.shape == (4, 32, 32, 1) and np.abs(x).max() <= 1 and (tmp_path / "e-trajectory.gif").is_file()
    r = subprocess.run(sample + ["--sampler", "ddim"], capture_output=True, text=True, timeout=300, env=_env(tfds_dir))
    assert r.returncode == 2 and "choose one of euler, heun" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("flags, message", [
    (["--steps", "0"], "sample steps must be in 1..100"),
    (["--steps", "101"], "sample steps must be in 1..100"),  # one per timestep from lambda = -4.8 (tiny: t = 99)
    (["--n", "0"], "num_samples must be positive"),
    (["--eta", "-0.1"], "eta must be in [0, 1]"),
    (["--autoguidance-scale", "0.5"], "1 turns autoguidance off"),
])
def test_sample_script_checks_every_numeric_flag(tiny_run, tmp_path, flags, message, capsys):
    import sample

    out, _ = tiny_run
    with pytest.raises(SystemExit) as e:
        sample.main([str(out), *flags, "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and "Traceback" not in err, (flags, err)
    assert not list(tmp_path.iterdir())  # nothing written


def test_file_errors_name_the_file(tiny_run, tmp_path, capsys):
    import evaluate
    import sample

    out, _ = tiny_run
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / "config.json").write_text("{not json")
    with pytest.raises(SystemExit) as e:
        sample.main([str(broken), "--n", "2"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and str(broken / "config.json") in err and "Traceback" not in err
    bad_npy = tmp_path / "bad.npy"
    bad_npy.write_bytes(b"not an array")
    with pytest.raises(SystemExit) as e:
        evaluate.main([str(bad_npy)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and str(bad_npy) in err and "Traceback" not in err


def test_out_under_an_existing_file_is_a_clear_error(tmp_path, tfds_dir, mnist_archives):
    (tmp_path / "a_file").write_text("x")
    r = _train(["--preset", "tiny", "--out", str(tmp_path / "a_file" / "run")], tfds_dir, mnist_archives)
    assert r.returncode == 2 and "Cannot create the run folder" in r.stderr and "Traceback" not in r.stderr
    r = _train(["--preset", "tiny", "--out", str(tmp_path / "a_file")], tfds_dir, mnist_archives)
    assert r.returncode == 2 and "already exists" in r.stderr and "Traceback" not in r.stderr


def test_existing_run_folder_is_refused(tiny_run, tfds_dir, mnist_archives):
    out, _ = tiny_run
    before = (out / "history.json").read_text()
    r = _train(["--preset", "tiny", "--out", str(out)], tfds_dir, mnist_archives)
    assert r.returncode == 2 and "--resume" in r.stderr
    assert (out / "history.json").read_text() == before


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path, tfds_dir, mnist_archives):
    args = ["--preset", "tiny", "--max-steps", "24", "--log-every", "2", "--checkpoint-every", "6", "--no-evaluate",
            "--num-samples", "4"]
    full = tmp_path / "full"
    assert _train([*args, "--out", str(full)], tfds_dir, mnist_archives).returncode == 0

    killed = tmp_path / "killed"
    cmd = [sys.executable, str(REPO / "scripts" / "train.py"), "--manual-dir", str(mnist_archives), "--no-progress",
           *args, "--out", str(killed)]
    proc = subprocess.Popen(cmd, env=_env(tfds_dir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not (killed / "checkpoints" / "12").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # mid-epoch, no chance to clean up
    proc.wait()
    assert (killed / "checkpoints" / "12").exists()
    assert not (killed / "summary.json").exists()

    r = _train(["--resume", "--out", str(killed)], tfds_dir, mnist_archives)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed" in r.stdout
    h_full = json.loads((full / "history.json").read_text())
    h_res = json.loads((killed / "history.json").read_text())
    assert h_res["step"] == list(range(24))
    np.testing.assert_allclose(h_res["loss"], h_full["loss"], rtol=1e-5, atol=1e-6)
    assert json.loads((killed / "summary.json").read_text())["steps"] == 24
    # the autoguidance guide (taken at step 12 of 24) survived the kill: the same samples
    assert json.loads((full / "summary.json").read_text())["autoguidance"]["guide_step"] == 12
    np.testing.assert_allclose(np.load(killed / "samples.npy"), np.load(full / "samples.npy"), atol=1e-5)
    # the post-hoc EMA snapshots (helpers.posthoc_ema) too: those before the kill kept, the rest remade alike
    from helpers.posthoc_ema import snapshot_files

    assert sorted(snapshot_files(killed)) == sorted(snapshot_files(full)) == [6, 12, 18, 24]
    for step, path in snapshot_files(full).items():
        with np.load(path) as a, np.load(snapshot_files(killed)[step]) as b:
            assert a.files == b.files and all(np.allclose(a[k], b[k], atol=1e-6) for k in a.files), step


def test_ctrl_c_mid_run_says_where_the_checkpoints_are(tmp_path, tfds_dir, mnist_archives):
    """Ctrl-C in the middle of a chunk: the run stops after it, with one message (the step reached, the newest
    checkpoint, --resume), no traceback and exit code 130."""
    out = tmp_path / "run"
    cmd = [sys.executable, str(REPO / "scripts" / "train.py"), "--manual-dir", str(mnist_archives), "--no-progress",
           "--preset", "tiny", "--max-steps", "2000", "--log-every", "50", "--checkpoint-every", "10", "--no-evaluate",
           "--out", str(out)]
    proc = subprocess.Popen(cmd, env=_env(tfds_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as from a terminal
    deadline = time.time() + 300
    while time.time() < deadline and not (out / "checkpoints" / "50").exists():
        time.sleep(0.05)
    time.sleep(0.5)  # inside the next chunk of 50 steps
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr[-3000:]
    assert "interrupted after step" in stdout and "continue with --resume" in stdout, stdout[-2000:]
    newest = int(stdout.split("(the newest: step ")[1].split(")")[0])
    assert newest >= 50 and (out / "checkpoints" / str(newest)).is_dir()


def test_corrupt_checkpoint_falls_back_to_previous(tmp_path, tfds_dir, mnist_archives):
    from helpers.runs import load_run

    out = tmp_path / "run"
    r = _train(["--preset", "tiny", "--max-steps", "8", "--checkpoint-every", "4", "--no-evaluate",
                "--out", str(out)], tfds_dir, mnist_archives)
    assert r.returncode == 0, r.stderr[-2000:]
    steps = sorted(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit())
    assert steps[-1] == 8 and 4 in steps
    assert load_run(out, step=4)[1].step == 4  # an older checkpoint on request
    from helpers.checkpoints import CheckpointError
    with pytest.raises(CheckpointError, match="no checkpoint of step 5"):
        load_run(out, step=5)
    newest = out / "checkpoints" / "8"
    for f in newest.rglob("*"):  # damage every file of the newest checkpoint
        if f.is_file():
            f.write_bytes(b"\0garbage")
    with pytest.warns(UserWarning, match="Skipped unreadable"):
        _, state = load_run(out)
    assert state.step == 4
    shutil.rmtree(out / "checkpoints" / "4")
    with pytest.raises(CheckpointError, match="No readable checkpoint"):
        load_run(out)


@pytest.mark.parametrize("argv, message", [
    (["--preset", "huge"], "Unknown preset"),
    (["--dataset", "cifar10"], "Unknown dataset"),
    (["--batch-size", "0"], "batch_size must be positive"),
    (["--batch-size", "-3"], "batch_size must be positive"),
    (["--learning-rate", "0"], "learning_rate must be positive"),
    (["--max-steps", "-1"], "max_steps must be positive"),
    (["--minutes", "0"], "minutes must be positive"),
    (["--sample-steps", "0"], "sample steps must be in 1..100"),
    (["--eta", "1.5"], "eta must be in [0, 1]"),
    (["--image-size", "31"], "cannot be halved"),
    (["--attention-resolutions", "4"], "never reached"),
    (["--schedule", "quadratic"], "Unknown schedule"),
    (["--resume"], "--resume needs --out"),
    (["--objective", "flow", "--prediction", "epsilon"], "use --prediction v"),
    (["--objective", "flow", "--sampler", "ddim"], "does not sample a flow run"),
    (["--sampler", "heun"], "does not sample a ddpm run"),
    (["--objective", "flow", "--flow-times", "beta"], "Unknown flow_times"),
])
def test_bad_input_gets_a_clear_error(argv, message, capsys):
    import train

    with pytest.raises(SystemExit) as exit_info:
        train.main(["--preset", "tiny", *argv] if "--preset" not in argv else argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_batch_larger_than_dataset(tmp_path, tfds_dir, mnist_archives, capsys):
    import train

    with pytest.raises(SystemExit) as e:
        train.main(["--preset", "tiny", "--train-limit", "16", "--batch-size", "32", "--out", str(tmp_path / "r"),
                    "--data-dir", str(tfds_dir), "--manual-dir", str(mnist_archives)])
    assert e.value.code == 2 and "larger than the 16 training images" in capsys.readouterr().err


def test_missing_data_offline(tmp_path, monkeypatch, capsys):
    import train

    from helpers import data

    monkeypatch.setattr(data, "_reachable", lambda url, timeout=3.0: False)
    with pytest.raises(SystemExit) as e:
        train.main(["--preset", "tiny", "--out", str(tmp_path / "r"), "--data-dir", str(tmp_path / "empty")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "t10k-labels-idx1-ubyte.gz" in err and "downloads/manual" in err
    assert not (tmp_path / "r").exists()  # nothing half-written


def test_flags_reach_the_config_with_their_types():
    """A flag of each kind, as typed on a command line, becomes the config value: a tuple, 'none', a
    float, an int, a string and a switch."""
    import train

    from helpers.config import get_config

    args = train.parse_args(["--hidden-dims", "8,16", "--max-steps", "none", "--learning-rate", "3e-4",
                             "--batch-size", "8", "--sampler", "ddim", "--no-ema-warmup"])
    cfg = get_config("tiny", **train.overrides_from(args))
    assert (cfg.model.hidden_dims, cfg.max_steps, cfg.learning_rate, cfg.batch_size, cfg.sampler, cfg.ema_warmup) == \
        ((8, 16), None, 3e-4, 8, "ddim", False)


def test_benchmark_script_prints_figures():
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "benchmark.py"), "--preset", "tiny", "--steps", "2",
                        "--skip-ddpm", "--samples", "4"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    figures = json.loads(r.stdout.strip().splitlines()[0])
    for k in ("images_per_s", "ms_per_step", "compile_s", "gflop_per_step", "matmul_gflops",
              "ddim100_s_for_4"):
        assert figures[k] > 0, k


def test_compare_torch_keeps_each_sides_best():
    import compare_torch

    r = compare_torch.summarize([50.0, 60.0], [57.0, 42.0], [40.0, 33.0], [36.0, 35.0])
    assert (r["torch_images_per_s"], r["jax_images_per_s"], r["train_ratio"]) == (60.0, 57.0, 0.95)
    assert (r["torch_ddim100_s"], r["jax_ddim100_s"], r["sampling_speedup"]) == (33.0, 35.0, 0.94)
    assert r["all"]["jax_images_per_s"] == [57.0, 42.0]
    r.update(parameters=2_747_233, machine="cpu", repeats=2)
    row = compare_torch.format_table({"small": r}).splitlines()[-1].split()
    assert row == ["small", "2,747,233", "60.0", "57.0", "0.95", "33.00s", "35.00s", "0.94"]


@pytest.mark.parametrize("argv, message", [
    (["--repeats", "0"], "--repeats must be at least 1"),
    (["--reference", "/nonexistent/ddpm_torch.py"], "does not exist"),
    (["--torch-python", "/nonexistent/python"], "pip install torch"),
])
def test_compare_torch_bad_input(argv, message, capsys):
    import compare_torch

    reference = REPO / "benchmarks" / "compare_torch.py"  # any existing file will do for the flags' checks
    base = {"--torch-python": sys.executable, "--reference": str(reference)}
    base.update(dict(zip(argv[::2], argv[1::2])))
    with pytest.raises(SystemExit) as e:
        compare_torch.main([a for kv in base.items() for a in kv])
    assert e.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("body, message", [
    ("import sys; print('reference broke', file=sys.stderr); sys.exit(3)", "failed (exit 3)"),
    ("print('no figures here')", "printed no JSON line"),
])
def test_compare_torch_says_which_command_failed(tmp_path, body, message):
    import compare_torch

    fake = tmp_path / "ddpm_torch.py"
    fake.write_text(body)
    with pytest.raises(SystemExit) as e:
        compare_torch.main(["--torch-python", sys.executable, "--reference", str(fake), "--models", "small"])
    text = str(e.value.code)
    assert message in text and str(fake) in text and " bench " in text


def test_sampler_sweep_scores_each_setting_and_seed(tiny_run, tmp_path, tfds_dir, mnist_archives):
    import sampler_sweep

    out, _ = tiny_run
    data = ["--data-dir", str(tfds_dir), "--manual-dir", str(mnist_archives)]
    prefix = tmp_path / "sweep"
    assert sampler_sweep.main([str(out), "--n", "16", "--seeds", "2", "--only", "ddim eta=1 25 all",
                               "dpmpp_2m_sde 10 all", "--out", str(prefix), *data]) == 0
    saved = json.loads(prefix.with_suffix(".json").read_text())
    rows = {(r["setting"], r["seed"]): r for r in saved["rows"]}
    assert set(rows) == {(s, seed) for s in ("ddim eta=1 25 all", "dpmpp_2m_sde 10 all") for seed in (0, 1)}
    for r in rows.values():  # every step runs the model and the guide
        assert r["nfe"] == 2 * r["steps"] and r["w"] == 2.0 and r["n"] == 16
        assert np.isfinite(r["fd"]) and r["fd"] > 0 and 0 <= r["confident"] <= 1
    assert rows[("ddim eta=1 25 all", 0)]["fd"] != rows[("ddim eta=1 25 all", 1)]["fd"]  # the seeds differ
    assert saved["steps"] == 8 and prefix.with_suffix(".png").stat().st_size > 0
    # the guide's age: the final EMA weights as the guide, in place of the run's own (step 4 of 8)
    assert sampler_sweep.main([str(out), "--n", "16", "--only", "dpmpp_2m_sde 10 all", "--guide-step", "8",
                               "--out", str(prefix), *data]) == 0
    rows = {(r["setting"], r["seed"]): r for r in json.loads(prefix.with_suffix(".json").read_text())["rows"]}
    aged = rows[("dpmpp_2m_sde 10 all guide=8", 0)]
    assert aged["guide_step"] == 8 and aged["fd"] != rows[("dpmpp_2m_sde 10 all", 0)]["fd"]
    prefix.with_suffix(".png").unlink()
    assert sampler_sweep.main([str(out), "--n", "16", "--out", str(prefix), "--plot-only"]) == 0
    assert prefix.with_suffix(".png").stat().st_size > 0


def test_ema_sweep_scores_each_length_on_both_references(tiny_run, tmp_path, tfds_dir, mnist_archives, capsys):
    import ema_sweep

    out, _ = tiny_run
    prefix, data = tmp_path / "ema", ["--data-dir", str(tfds_dir), "--manual-dir", str(mnist_archives)]
    assert ema_sweep.main([str(out), "--n", "16", "--seeds", "2", "--model", "0.07", "--guide", "0.1",
                           "--guide-steps", "4", "--out", str(prefix), *data]) == 0
    rows = {(r["setting"], r["seed"]): r for r in json.loads(prefix.with_suffix(".json").read_text())["rows"]}
    names = ("model own, guide own", "model 0.07, guide own", "model own, guide 0.1@4", "model 0.07, guide 0.1@4")
    assert set(rows) == {(name, seed) for name in names for seed in (0, 1)}
    for r in rows.values():
        assert np.isfinite([r["fd_train"], r["fd_test"]]).all() and r["fd_train"] != r["fd_test"]
    assert rows[(names[0], 0)]["fd_test"] != rows[(names[1], 0)]["fd_test"]  # other weights, other digits
    table = capsys.readouterr().out
    assert all(name in table for name in names) and prefix.with_suffix(".png").stat().st_size > 0
    with pytest.raises(SystemExit) as e:
        ema_sweep.main([str(out), "--guide", "0.1", "--out", str(prefix)])
    assert e.value.code == 2 and "go together" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--only", "euler"], "--only matches no setting"),
    (["--n", "1"], "--n must be at least 2"),
    (["--autoguidance-scale", "0.5"], "autoguidance_scale must be at least 1"),
    (["--only", "ddim eta=1 50 interval"], "1,000-step schedule"),
    (["--plot-only", "--out", "nowhere/sweep"], "does not exist"),
    (["--only", "ddim eta=1 25 all", "--guide-step", "5"], "no checkpoint of step 5"),
])
def test_sampler_sweep_bad_input(tiny_run, argv, message, capsys):
    import sampler_sweep

    out, _ = tiny_run
    with pytest.raises(SystemExit) as e:
        sampler_sweep.main([str(out), *argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and "Traceback" not in err


def test_sampler_sweep_missing_run_is_a_clear_error(tmp_path, capsys):
    import sampler_sweep

    with pytest.raises(SystemExit) as e:
        sampler_sweep.main([str(tmp_path / "no-run"), "--only", "ddim eta=1 25 all"])
    assert e.value.code == 2 and "no-run" in capsys.readouterr().err


def test_training_time_curve_trains_scores_and_plots(tmp_path, tfds_dir, mnist_archives, monkeypatch):
    import training_time_curve

    from helpers import config

    # the cpu preset's own code path (a time budget, planned once), on the tiny model: the runs take seconds
    monkeypatch.setitem(config.PRESETS, "cpu", config.PRESETS["tiny"].replace(preset="cpu"))
    runs = tmp_path / "curve"
    argv = ["--minutes", "0.05", "0.1", "--runs-dir", str(runs), "--n", "16",
            "--data-dir", str(tfds_dir), "--manual-dir", str(mnist_archives)]
    assert training_time_curve.main(argv) == 0
    points = json.loads((runs / "time_curve.json").read_text())
    assert [p["minutes"] for p in points] == [0.05, 0.1]
    assert all(p["steps"] > 0 and np.isfinite(p["fd"]) and len(p["samples"]) == 12 for p in points)
    assert (runs / "time_curve.png").stat().st_size > 0
    assert training_time_curve.main(argv) == 0  # the finished runs are reused, not retrained
    again = json.loads((runs / "time_curve.json").read_text())
    assert [p["steps"] for p in again] == [p["steps"] for p in points]


def test_training_time_curve_bad_flags(capsys):
    import training_time_curve

    with pytest.raises(SystemExit) as e:
        training_time_curve.main(["--minutes", "0"])
    assert e.value.code == 2 and "--minutes must be positive" in capsys.readouterr().err
