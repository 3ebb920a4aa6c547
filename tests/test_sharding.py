"""Data parallelism: the batch split over 2 devices of one process, and over 2 processes joined by JAX's
multi-controller runtime (gloo between CPU processes), trains the same parameters as 1 device; and when a
process fails (killed, a refused folder, no data), every process stops with one clear line."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest
from needs import free_port

REPO = Path(__file__).resolve().parents[1]
DRIVER = REPO / "tests" / "multiprocess_train.py"

SCRIPT = textwrap.dedent("""
    import jax, numpy as np
    from flax import nnx
    assert len(jax.devices()) == 2, jax.devices()
    from helpers.config import get_config
    from helpers.distributed import data_mesh
    from helpers.training import BatchFeed, History, TrainState, make_plan, place_state, train

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(96, 28, 28, 1), dtype=np.uint8)
    cfg = get_config("tiny", batch_size=32, max_steps=3, log_every=3, train_limit=None)
    out = {}
    for name, devs in [("one", jax.devices()[:1]), ("two", jax.devices())]:
        mesh = data_mesh(devs)
        state = place_state(TrainState(cfg), mesh)
        plan, history = make_plan(cfg, len(images)), None
        history = History(plan, cfg.batch_size)
        train(state, BatchFeed(cfg, state, images, None, mesh), plan, cfg, [history])
        params = jax.tree.leaves(nnx.state(state.model, nnx.Param))
        out[name] = (np.array(history.record["loss"]), [np.asarray(p) for p in params])
        print(name, mesh.devices.shape, history.record["loss"])
    np.testing.assert_allclose(out["one"][0], out["two"][0], rtol=1e-4, atol=1e-6)
    for a, b in zip(out["one"][1], out["two"][1]):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)
    print("SHARDED_MATCHES")
""")


def test_sharded_step_matches_single_device():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    r = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert "SHARDED_MATCHES" in r.stdout
    assert "(2,)" in r.stdout  # the second run really used a 2-device mesh


TINY = ["--preset", "tiny", "--max-steps", "8", "--log-every", "2", "--checkpoint-every", "4", "--num-samples", "4",
        "--no-evaluate", "--no-progress"]


def _env(tfds_dir, devices: int = 1) -> dict:
    env = {**os.environ, "TFDS_DATA_DIR": str(tfds_dir), "JAX_PLATFORMS": "cpu", "MNIST_DIFFUSION_HUGE_PAGES": "0"}
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def _train(out, tfds_dir, archives, *extra, devices: int = 1, processes: int = 1, wrong_order: bool = False):
    """scripts/train.py at tiny for 8 steps in `processes` processes of `devices` CPU devices each."""
    base = [sys.executable, str(DRIVER), *(["--wrong-order"] if wrong_order else []), *TINY, "--out", str(out),
            "--manual-dir", str(archives), *extra]
    if processes == 1:
        r = subprocess.run(base, env=_env(tfds_dir, devices), capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
        return r.stdout
    port = free_port()
    procs = [subprocess.Popen(base + ["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(processes),
                                      "--process-id", str(i)], env=_env(tfds_dir, devices),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(processes)]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (stdout, stderr) in zip(procs, outputs):
        assert p.returncode == 0, stdout[-2000:] + stderr[-4000:]
    return outputs[0][0]


def _params(run_dir) -> list[np.ndarray]:
    from flax import nnx

    from helpers.runs import load_run

    _, state = load_run(run_dir)
    return [np.asarray(p) for p in jax.tree.leaves(nnx.state((state.model, state.ema.model), nnx.Param))]


def _assert_same_params(a, b):
    for x, y in zip(_params(a), _params(b)):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def one_device(tmp_path_factory, tfds_dir, mnist_archives):
    out = tmp_path_factory.mktemp("mp") / "one-device"
    _train(out, tfds_dir, mnist_archives)
    return out


def test_two_processes_train_what_one_device_and_two_devices_train(one_device, tmp_path, tfds_dir, mnist_archives):
    two_processes, two_devices = tmp_path / "two-processes", tmp_path / "two-devices"
    stdout = _train(two_processes, tfds_dir, mnist_archives, processes=2)
    assert "cpu x2 in 2 processes" in stdout
    _train(two_devices, tfds_dir, mnist_archives, devices=2)
    _assert_same_params(two_processes, one_device)
    _assert_same_params(two_devices, one_device)
    import json

    losses = [json.loads((d / "history.json").read_text())["loss"] for d in (one_device, two_processes)]
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5, atol=1e-6)
    # process 0 alone wrote the folder: one history, one set of samples
    assert sorted(p.name for p in two_processes.iterdir()) == sorted(p.name for p in one_device.iterdir())

    # a run checkpointed by two processes resumes in one: drop step 8, resume from step 4
    import shutil

    resumed = tmp_path / "resumed"
    shutil.copytree(two_processes, resumed)
    shutil.rmtree(resumed / "checkpoints" / "8")
    (resumed / "summary.json").unlink()
    r = subprocess.run([sys.executable, str(DRIVER), "--resume", "--out", str(resumed), "--no-progress",
                        "--manual-dir", str(mnist_archives)], env=_env(tfds_dir), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0 and "resumed" in r.stdout and "at step 4" in r.stdout, r.stderr[-3000:]
    _assert_same_params(resumed, one_device)


def test_processes_shuffling_differently_are_caught(one_device, tmp_path, tfds_dir, mnist_archives):
    """The comparison above fails when each process shuffles the training set with a key of its own."""
    wrong = tmp_path / "wrong-order"
    _train(wrong, tfds_dir, mnist_archives, processes=2, wrong_order=True)
    with pytest.raises(AssertionError):
        _assert_same_params(wrong, one_device)


def test_a_process_that_never_joins_is_a_clear_error(tmp_path, tfds_dir):
    out = tmp_path / "alone"
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "train.py"), *TINY, "--out", str(out),
                        "--coordinator", f"127.0.0.1:{free_port()}", "--num-processes", "2", "--process-id", "0",
                        "--join-timeout", "3"], env=_env(tfds_dir), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "did not all join within 3 s" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()  # nothing written


@pytest.mark.parametrize("flags, message", [
    (["--coordinator", "127.0.0.1:1234"], "go together"),
    (["--coordinator", "nohost", "--num-processes", "2", "--process-id", "0"], "HOST:PORT"),
    (["--coordinator", "127.0.0.1:1234", "--num-processes", "2", "--process-id", "2"], "--process-id must be in 0..1"),
])
def test_process_flags_are_checked(flags, message, capsys):
    sys.path.insert(0, str(REPO / "scripts"))
    import train

    with pytest.raises(SystemExit) as e:
        train.main(["--preset", "tiny", *flags])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and "Traceback" not in err


def _start(out, tfds_dir, archives, *extra, own_flags=None):
    """Two processes of scripts/train.py at tiny (each its supervisor and worker), started and not waited
    for; `own_flags` = {process id: flags that process alone gets}."""
    port = free_port()
    return [subprocess.Popen([sys.executable, str(DRIVER), *TINY, "--out", str(out), "--manual-dir", str(archives),
                              *extra, *(own_flags or {}).get(i, []), "--coordinator", f"127.0.0.1:{port}",
                              "--num-processes", "2", "--process-id", str(i)],
                             env=_env(tfds_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(2)]


def _one_clear_line(stderr: str) -> str:
    """The one line a process printed on stderr, with no stack trace of Python or of JAX's C++ runtime."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-3000:]
    return lines[0]


def test_slurm_tasks_drive_their_share_of_the_node_s_gpus(monkeypatch):
    """One task per GPU: JAX's own choice (the GPU of SLURM_LOCALID). Fewer tasks than GPUs: each task gets
    its share, which scripts/train.py passes to jax.distributed.initialize."""
    sys.path.insert(0, str(REPO / "scripts"))
    import _processes

    job = {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "2", "SLURM_NNODES": "2", "SLURM_GPUS_ON_NODE": "4"}
    assert _processes.slurm_local_device_ids({**job, "SLURM_NTASKS_PER_NODE": "1", "SLURM_LOCALID": "0"}) == [0, 1, 2, 3]
    per_gpu = {**job, "SLURM_NTASKS": "8", "SLURM_NTASKS_PER_NODE": "4", "SLURM_LOCALID": "3"}
    assert _processes.slurm_local_device_ids(per_gpu) is None
    two_per_node = {**job, "SLURM_NTASKS": "4", "SLURM_LOCALID": "1"}  # 4 tasks on 2 nodes: 2 GPUs each
    assert _processes.slurm_local_device_ids(two_per_node) == [2, 3]
    assert _processes.slurm_local_device_ids({"SLURM_NTASKS": "2", "SLURM_GPUS_ON_NODE": "4"}) is None  # not SLURM

    seen = {}
    monkeypatch.setattr("jax.distributed.initialize", lambda **kwargs: seen.update(kwargs))
    monkeypatch.setattr(jax.config, "update", lambda *args: None)  # this test process stays as it is
    for name, value in {**job, "SLURM_NTASKS_PER_NODE": "1", "SLURM_LOCALID": "0"}.items():
        monkeypatch.setenv(name, value)
    _processes.join_processes(timeout_s=5)
    assert seen["local_device_ids"] == [0, 1, 2, 3] and seen["heartbeat_timeout_seconds"] == _processes.HEARTBEAT_TIMEOUT_S
