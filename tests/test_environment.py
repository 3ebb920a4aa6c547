"""What importing `helpers` changes (the four GPU-memory variables, nothing else), and what
`tune_for_cpu()` applies: the XLA:CPU flag (and that it reaches the compiler) and the huge-pages restart."""

import os
import platform
import subprocess
import sys
from importlib import metadata

import pytest
from packaging.version import Version

from helpers.environment import (CPU_XLA_FLAG, CPU_XLA_FLAG_SINCE, GPU_MEMORY_VARIABLES, HUGE_PAGES_TUNABLE,
                                 huge_pages_environment, transparent_huge_pages_mode, with_cpu_xla_flag)

YNN = CPU_XLA_FLAG.split("=")[0]
FLAG_KNOWN = Version(metadata.version("jaxlib")) >= CPU_XLA_FLAG_SINCE


def _python(code: str, **env_changes) -> str:
    """Run `code` in a fresh interpreter with the environment changed (None removes a variable)."""
    env = {k: v for k, v in os.environ.items() if k not in env_changes}
    env.update({k: v for k, v in env_changes.items() if v is not None})
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def test_importing_helpers_sets_only_the_gpu_memory_variables():
    code = ("import os, jax; before = dict(os.environ)  # jax itself may set a variable or two on import\n"
            "import helpers, helpers.config, helpers.training\n"
            "print(sorted(k for k in os.environ if before.get(k) != os.environ[k]))\n"
            "import jax; print(jax.config.jax_compilation_cache_dir)")
    out = _python(code, XLA_FLAGS=None, JAX_COMPILATION_CACHE_DIR=None, TF_CPP_MIN_LOG_LEVEL="3",
                  **{k: None for k in GPU_MEMORY_VARIABLES if k != "TF_CPP_MIN_LOG_LEVEL"}).splitlines()
    assert out[0] == str(sorted(k for k in GPU_MEMORY_VARIABLES if k != "TF_CPP_MIN_LOG_LEVEL"))  # the user's 3 kept
    assert out[1] == "None"  # no compilation cache turned on behind the user's back


def test_the_flag_is_added_once_and_a_users_own_value_is_kept():
    assert with_cpu_xla_flag("", "0.10.2") == CPU_XLA_FLAG
    assert with_cpu_xla_flag("--xla_force_host_platform_device_count=2", "0.12.0") == (
        f"--xla_force_host_platform_device_count=2 {CPU_XLA_FLAG}")
    assert with_cpu_xla_flag(f"{YNN}=+individual_convolution", "0.11.0") == f"{YNN}=+individual_convolution"
    assert with_cpu_xla_flag(CPU_XLA_FLAG, "0.10.2") == CPU_XLA_FLAG
    # XLA aborts on a flag it does not know: an older (or missing) jaxlib gets $XLA_FLAGS unchanged
    assert with_cpu_xla_flag("--foo=1", "0.9.2") == "--foo=1"
    assert with_cpu_xla_flag("", None) == ""


CONVOLUTION = (
    "import jax, jax.numpy as jnp\n"
    "x = jnp.ones((8, 16, 16, 32)); w = jnp.ones((3, 3, 32, 32))\n"
    "f = jax.jit(lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME',"
    " dimension_numbers=('NHWC', 'HWIO', 'NHWC')))\n"
    "print('YNN' if '__ynn_fusion' in f.lower(x, w).compile().as_text() else 'NATIVE')\n")


@pytest.mark.skipif(not FLAG_KNOWN, reason="no flag is added for this jaxlib")
def test_tune_for_cpu_keeps_convolutions_on_xlas_own_kernels():
    tuned = _python("from helpers.environment import tune_for_cpu; tune_for_cpu(restart=False)\n" + CONVOLUTION,
                    XLA_FLAGS=None, JAX_COMPILATION_CACHE_DIR=None)
    plain = _python("import helpers\n" + CONVOLUTION, XLA_FLAGS=None, JAX_COMPILATION_CACHE_DIR=None)
    assert tuned.split() == ["NATIVE"] and plain.split() == ["YNN"]


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


def test_a_script_restarts_once_says_so_and_keeps_its_arguments(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(
        "import os, sys\n"
        "from helpers.environment import tune_for_cpu\n"
        "print('start', flush=True)\n"
        "if __name__ == '__main__':\n"
        "    tune_for_cpu()\n"
        "    print('main', os.environ.get('GLIBC_TUNABLES'), sys.argv[1:])\n")
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "MNIST_DIFFUSION_HUGE_PAGES")}
    r = subprocess.run([sys.executable, str(script), "--flag", "x y"], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    expected = huge_pages_environment(env, platform.libc_ver(), transparent_huge_pages_mode())
    if expected is None:  # nothing to gain on this machine: no restart
        assert r.stdout.splitlines() == ["start", "main None ['--flag', 'x y']"]
    else:  # restarted once (two starts), saying so; main ran once, with the tunable and the same arguments
        assert r.stdout.splitlines() == ["start", "start", f"main {HUGE_PAGES_TUNABLE} ['--flag', 'x y']"]
        assert "restarting once with GLIBC_TUNABLES" in r.stderr
