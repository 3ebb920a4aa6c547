"""The XLA:CPU flags `helpers` adds to $XLA_FLAGS, and that they reach the compiler."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.environment import (
    CPU_XLA_FLAGS,
    _jaxlib_version,
    cpu_xla_flags_known,
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
