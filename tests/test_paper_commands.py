"""Every command the README shows, at the `paper` preset as a quick check on the CPU (tests/paper_path.py),
in the README's order: the main job, then the commands that read its run folder, then the others. A
notebook run as a script (`python notebooks/04_train_ddpm.py`) must also save its figures as files."""

import re
import shlex
import subprocess
import sys

from paper_path import REPO, paper_env

#: Commands the README shows that this test does not run, and why.
NOT_RUN = {
    "python3 -m venv": "the install: .ci/run does it from scratch",
    "python -m pytest": "the test suite itself",
    "jupyter lab": "starts JupyterLab; nbmake runs every notebook at the quick `paper` preset (conftest.py)",
    "python tools/run_notebooks.py": "re-executes the committed notebooks in place; nbmake runs their code",
    "python scripts/train.py --out DIR --coordinator": "a template (DIR, HOST:PORT); tests/test_sharding.py runs "
                                                        "two processes",
    "python benchmarks/compare_torch.py": "needs the PyTorch reference's own environment",
    "bash benchmarks/gpu_benchmark.sh": "needs a GPU (nvidia-smi)",
}


def readme_commands() -> list[str]:
    """The commands in the README's bash blocks and inline code, comments dropped, in order."""
    text = (REPO / "README.md").read_text()
    blocks = "\n".join(re.findall(r"```bash\n(.*?)```", text, re.S)).splitlines()
    inline = re.findall(r"`((?:python|bash) [^`]+)`", text)
    commands = [line.split("  #")[0].strip() for line in blocks + inline]
    return list(dict.fromkeys(c for c in commands if c))


def as_paper(command: str, run: str) -> list[str]:
    """The command at `paper`, run by this Python, its run folder `run` (the README's runs/cpu)."""
    words = [run if w == "runs/cpu" else w for w in shlex.split(command)]
    if words[1] == "scripts/train.py" and "--resume" not in words and "--preset" not in words:
        words += ["--preset", "paper"] + ([] if len(words) > 2 else ["--out", run])  # the main job: runs/cpu
    words = ["paper" if a == "cpu" and b == "--preset" else a for b, a in zip([""] + words, words)]
    return [sys.executable, str(REPO / words[1]), *words[2:]]


def test_every_readme_command_runs_at_paper(tmp_path):
    commands = readme_commands()
    assert any(c == "python scripts/train.py" for c in commands), "the main job is missing from the README"
    ran = []
    for command in commands:
        if any(command.startswith(prefix) for prefix in NOT_RUN):
            continue
        assert command.startswith("python "), f"no rule for {command!r}: run it here or say in NOT_RUN why not"
        r = subprocess.run(as_paper(command, str(tmp_path / "cpu")), cwd=tmp_path, env=paper_env(tmp_path),
                           capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, f"{command}\n" + r.stdout[-2000:] + r.stderr[-4000:]
        if command.startswith("python notebooks/"):  # no display: the figures go to notebooks/figures/<name>/
            figures = REPO / "notebooks" / "figures" / command.split("/")[1].removesuffix(".py")
            assert "preset 'paper'" in r.stdout and any(figures.glob("*.png")), f"{command}: no figures saved"
        ran.append(command)
    assert len(ran) >= 10, ran
    assert '"preset": "paper"' in (tmp_path / "cpu" / "config.json").read_text()
