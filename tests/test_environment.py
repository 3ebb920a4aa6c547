"""The XLA:CPU flags `helpers` adds to $XLA_FLAGS (and that they reach the compiler), and the
restart with huge pages the long-running scripts do."""

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.environment import (
    CPU_XLA_FLAGS,
    HUGE_PAGES_TUNABLE,
    _jaxlib_version,
    cpu_xla_flags_known,
    huge_pages_environment,
    transparent_huge_pages_mode,
    xla_cpu_flags,
)

REPO = Path(__file__).resolve().parents[1]
YNN = "--xla_cpu_experimental_ynn_fusion_type"
FLAGS_KNOWN = cpu_xla_flags_known(_jaxlib_version())


def test_flags_are_appended_and_a_users_own_value_is_kept():
    assert xla_cpu_flags("", "0.10.2") == f"{YNN}=-individual_convolution"
    assert xla_cpu_flags("--xla_force_host_platform_device_count=2", "0.10.2") == (
        f"--xla_force_host_platform_device_count=2 {YNN}=-individual_convolution")
    mine = f"--xla_force_host_platform_device_count=2 {YNN}="
    assert xla_cpu_flags(mine, "0.10.2") == mine
    assert xla_cpu_flags(f"{YNN}=+individual_convolution", "0.11.0") == f"{YNN}=+individual_convolution"


def test_no_flags_for_a_jaxlib_that_may_not_know_them():
    # XLA aborts on a flag it does not know: older (or missing) jaxlib gets $XLA_FLAGS unchanged
    assert xla_cpu_flags("--foo=1", "0.9.2") == "--foo=1"
    assert xla_cpu_flags("", None) == ""
    assert xla_cpu_flags("", "0.10.0.dev20260101") == f"{YNN}=-individual_convolution"


def _convolution_fusions(xla_flags: str | None) -> str:
    """Compile a convolution in a fresh process after `import helpers`; print its fusion kinds."""
    code = (
        "import helpers, jax, jax.numpy as jnp\n"
        "x = jnp.ones((8, 16, 16, 32)); w = jnp.ones((3, 3, 32, 32))\n"
        "f = jax.jit(lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME',"
        " dimension_numbers=('NHWC', 'HWIO', 'NHWC')))\n"
        "hlo = f.lower(x, w).compile().as_text()\n"
        "print('FLAGS', __import__('os').environ.get('XLA_FLAGS', ''))\n"
        "print('YNN' if '__ynn_fusion' in hlo else 'NATIVE')\n")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    env["MNIST_DIFFUSION_JAX_CACHE"] = "0"  # compile for real, not from the cache
    if xla_flags is not None:
        env["XLA_FLAGS"] = xla_flags
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env, timeout=300,
                       check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


@pytest.mark.skipif(not FLAGS_KNOWN, reason="no flags are added for this jaxlib")
def test_importing_helpers_keeps_convolutions_on_xlas_own_kernels():
    out = _convolution_fusions(None)
    for name, value in CPU_XLA_FLAGS.items():
        assert f"--{name}={value}" in out
    assert "NATIVE" in out, out


@pytest.mark.skipif(not FLAGS_KNOWN, reason="this jaxlib may not know the flag")
def test_a_users_own_setting_wins():
    out = _convolution_fusions(f"{YNN}=+individual_convolution")
    assert f"{YNN}=+individual_convolution" in out and "-individual_convolution" not in out
    assert "YNN" in out.splitlines()[-1], out


GLIBC = ("glibc", "2.36")


def test_huge_pages_are_added_only_where_they_change_something():
    env = huge_pages_environment({"PATH": "/bin"}, GLIBC, "madvise")
    assert env == {"PATH": "/bin", "GLIBC_TUNABLES": HUGE_PAGES_TUNABLE}
    mine = huge_pages_environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, GLIBC, "madvise")
    assert mine["GLIBC_TUNABLES"] == f"glibc.malloc.arena_max=2:{HUGE_PAGES_TUNABLE}"  # the user's kept
    assert huge_pages_environment({}, GLIBC, "always") is None  # the kernel uses them anyway
    assert huge_pages_environment({}, GLIBC, "never") is None
    assert huge_pages_environment({}, GLIBC, None) is None  # not Linux, or no such file
    assert huge_pages_environment({}, ("glibc", "2.31"), "madvise") is None  # too old for the tunable
    assert huge_pages_environment({}, ("", ""), "madvise") is None  # macOS, musl, Windows
    assert huge_pages_environment({"MNIST_DIFFUSION_HUGE_PAGES": "0"}, GLIBC, "madvise") is None
    assert huge_pages_environment(env, GLIBC, "madvise") is None  # already set: no second restart


def test_transparent_huge_pages_mode_reads_the_bracketed_choice(tmp_path):
    f = tmp_path / "enabled"
    f.write_text("always [madvise] never\n")
    assert transparent_huge_pages_mode(str(f)) == "madvise"
    assert transparent_huge_pages_mode(str(tmp_path / "missing")) is None


def test_a_script_restarts_once_with_huge_pages_and_keeps_its_arguments(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(
        "import os, sys\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "from helpers.environment import restart_with_huge_pages\n"
        "print('start', flush=True)\n"
        "if __name__ == '__main__':\n"
        "    restart_with_huge_pages()\n"
        "    print('main', os.environ.get('GLIBC_TUNABLES'), sys.argv[1:])\n")
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "MNIST_DIFFUSION_HUGE_PAGES")}
    r = subprocess.run([sys.executable, str(script), "--flag", "x y"], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    expected = huge_pages_environment(env, platform.libc_ver(), transparent_huge_pages_mode())
    if expected is None:  # nothing to gain on this machine: no restart
        assert r.stdout.splitlines() == ["start", "main None ['--flag', 'x y']"]
    else:  # restarted once (two starts), main ran once, with the tunable and the same arguments
        assert r.stdout.splitlines() == ["start", "start", f"main {HUGE_PAGES_TUNABLE} ['--flag', 'x y']"]
