"""Several processes that fail cleanly (scripts/_processes.py): two processes of scripts/train.py at `tiny`
on 127.0.0.1, with one fault each. (Split from tests/test_sharding.py so that pytest-xdist can run the two
files side by side.)"""

import os
import re
import signal
import subprocess
import sys
import time

from needs import free_port
from test_sharding import DRIVER, TINY, _assert_same_params, _env, _one_clear_line, _start, _train

def test_only_process_0_prints_and_the_others_wait_for_its_samples(tmp_path, tfds_dir, mnist_archives):
    """Process 0 alone prints; process 1 leaves only after process 0's sampling and scoring, made 40 s longer
    here (as a long draw is), and both end well: no shutdown barrier or collective times out meanwhile."""
    procs = _start(tmp_path / "run", tfds_dir, mnist_archives, "--slow-finish", "40")
    out1, err1 = procs[1].communicate(timeout=600)
    process_1_left = time.time()
    out0, err0 = procs[0].communicate(timeout=600)
    assert [p.returncode for p in procs] == [0, 0], err0[-2000:] + err1[-2000:]
    assert process_1_left >= (tmp_path / "run" / "summary.json").stat().st_mtime  # written before it left
    assert "done: 8 steps" in out0 and "[Gloo]" not in out0 + err0  # the C++ runtime's lines go to a log
    assert out1 == "" and err1 == ""

def test_a_killed_process_stops_the_other_with_one_line_and_the_run_resumes(tmp_path, tfds_dir, mnist_archives):
    flags = ["--max-steps", "40", "--checkpoint-every", "8"]
    reference = tmp_path / "uninterrupted"
    _train(reference, tfds_dir, mnist_archives, *flags)
    killed = tmp_path / "killed"
    procs = _start(killed, tfds_dir, mnist_archives, *flags)
    deadline = time.time() + 300
    while time.time() < deadline and not (killed / "checkpoints" / "16").exists():
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGKILL)  # process 1, mid-run, with no chance to clean up
    t0 = time.time()
    _, stderr = procs[0].communicate(timeout=300)
    assert procs[0].returncode == 4 and time.time() - t0 < 150, stderr[-3000:]
    line = _one_clear_line(stderr)
    assert "process 0 stopped: it lost contact with process 1" in line and f"--out {killed} --resume" in line
    saved = int(re.search(r"newest checkpoint is step (\d+)", line).group(1))
    assert saved >= 16 and (killed / "checkpoints" / str(saved)).is_dir()
    procs[1].wait(timeout=60)
    r = subprocess.run([sys.executable, str(DRIVER), "--resume", "--out", str(killed), "--no-progress",
                        "--manual-dir", str(mnist_archives)], env=_env(tfds_dir), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0 and f"at step {saved}" in r.stdout, r.stderr[-3000:]
    _assert_same_params(killed, reference)

def test_a_refused_run_folder_stops_every_process_with_one_line(tmp_path, tfds_dir, mnist_archives):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    procs = _start(out, tfds_dir, mnist_archives)
    (_, err0), (_, err1) = (p.communicate(timeout=600) for p in procs)
    assert [p.returncode for p in procs] == [2, 2]
    assert "already exists" in _one_clear_line(err0)
    assert "process 0 of 2 could not go on" in _one_clear_line(err1) and "already exists" in err1
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"

def test_a_process_without_the_data_stops_every_process(tmp_path, tfds_dir, mnist_archives):
    """Process 1's machine has neither the prepared dataset nor the archives: it says what to do, and
    process 0 says which process could not go on; no run folder is left behind."""
    out = tmp_path / "run"
    empty = ["--data-dir", str(tmp_path / "empty"), "--manual-dir", str(tmp_path / "no-archives")]
    procs = _start(out, tfds_dir, mnist_archives, own_flags={1: empty})
    (_, err0), (_, err1) = (p.communicate(timeout=600) for p in procs)
    assert [p.returncode for p in procs] == [2, 2]
    assert "process 1 of 2 could not go on" in _one_clear_line(err0) and "no-archives" in err0
    assert err1.startswith("error: --manual-dir") and "train-images-idx3-ubyte.gz" in err1 and "Traceback" not in err1
    assert not out.exists()

def test_ctrl_c_in_one_process_stops_both_after_a_chunk(tmp_path, tfds_dir, mnist_archives):
    """Ctrl-C in process 1's terminal (SIGINT to its process group): both processes stop after the current
    chunk, process 0 says after which step and where the checkpoints are, nothing is cut in half."""
    out = tmp_path / "run"
    port = free_port()
    procs = [subprocess.Popen([sys.executable, str(DRIVER), *TINY, "--max-steps", "4000", "--checkpoint-every", "8",
                               "--out", str(out), "--manual-dir", str(mnist_archives), "--coordinator",
                               f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)],
                              env=_env(tfds_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)  # each its own terminal
             for i in range(2)]
    deadline = time.time() + 300
    while time.time() < deadline and not (out / "checkpoints" / "16").exists():
        time.sleep(0.05)
    os.killpg(procs[1].pid, signal.SIGINT)
    (out0, err0), (out1, err1) = (p.communicate(timeout=300) for p in procs)
    assert [p.returncode for p in procs] == [130, 130], err0[-2000:] + err1[-2000:]
    said = re.search(r"interrupted after step (\d+): the checkpoints in (.+) are kept \(the newest: step (\d+)\)",
                     out0 + err0)
    assert said and int(said.group(3)) >= 16 and (out / "checkpoints" / said.group(3)).is_dir(), out0 + err0
    assert int(said.group(1)) < 4000 and "Traceback" not in err0 + err1 and out1 == ""
