"""The process environment: GPU memory shared by TensorFlow (data) and JAX, `tune_for_cpu()` (the one
explicit call that tunes XLA and the C library for a CPU; the Performance page has its measurements), and
what a run records of its machine (`machine_description`, the CPU time other machines took)."""

import os
import platform
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
from packaging.version import Version

#: Set before TensorFlow or JAX is imported, as the reference tutorial lists them.
GPU_MEMORY_VARIABLES = {
    "TF_CPP_MIN_LOG_LEVEL": "2",  # TensorFlow: warnings and errors only
    "TF_FORCE_GPU_ALLOW_GROWTH": "true",  # TensorFlow: never pre-allocate GPU memory
    "XLA_PYTHON_CLIENT_PREALLOCATE": "false",  # JAX: do not pre-allocate GPU memory
    "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.8",  # JAX: use at most 80% of the GPU
}

#: Keeps CPU convolutions on XLA's own kernels (jaxlib >= 0.10 hands them to YNNPACK, slower here).
CPU_XLA_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
CPU_XLA_FLAG_SINCE = Version("0.10")

#: Huge pages from glibc's malloc: XLA frees a step's temporaries each step, which then fault in again.
HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"


def set_gpu_memory_variables() -> None:
    """Set `GPU_MEMORY_VARIABLES`, keeping any value the user already set."""
    for name, value in GPU_MEMORY_VARIABLES.items():
        os.environ.setdefault(name, value)


def with_cpu_xla_flag(xla_flags: str, jaxlib_version: str | None) -> str:
    """$XLA_FLAGS plus `CPU_XLA_FLAG`, unless the user set that flag or this jaxlib predates it."""
    name = CPU_XLA_FLAG.split("=")[0]
    if jaxlib_version is None or Version(jaxlib_version) < CPU_XLA_FLAG_SINCE or name in xla_flags:
        return xla_flags
    return f"{xla_flags} {CPU_XLA_FLAG}".strip()


def huge_pages_environment(environ: dict[str, str], libc: tuple[str, str], thp_mode: str | None):
    """The environment to restart with, or None where a restart changes nothing: not glibc >= 2.35, a kernel
    mode other than "madvise", the tunable already set (no second restart), or $MNIST_DIFFUSION_HUGE_PAGES=0."""
    name, version = libc
    tunables = environ.get("GLIBC_TUNABLES", "")
    if (environ.get("MNIST_DIFFUSION_HUGE_PAGES") == "0" or name != "glibc" or not version
            or Version(version) < Version("2.35") or thp_mode != "madvise" or "glibc.malloc.hugetlb" in tunables):
        return None
    return {**environ, "GLIBC_TUNABLES": f"{tunables}:{HUGE_PAGES_TUNABLE}".lstrip(":")}


def transparent_huge_pages_mode(path: str = "/sys/kernel/mm/transparent_hugepage/enabled") -> str | None:
    """The kernel's transparent-huge-page mode ("always", "madvise" or "never"); None if unknown."""
    try:
        text = Path(path).read_text()
    except OSError:  # absent or unreadable: unknown
        return None
    return text[text.index("[") + 1:text.index("]")] if "[" in text and "]" in text else None


def tune_for_cpu(restart: bool = True, announce: bool = True) -> None:
    """Before JAX starts: add `CPU_XLA_FLAG` to $XLA_FLAGS and, with `restart`, turn on huge pages,
    which glibc reads only at start-up: the script restarts itself once, same arguments, saying so (unless
    not `announce`). What the user set in either variable is kept."""
    jaxlib = next((d.version for d in metadata.distributions(name="jaxlib")), None)
    if flags := with_cpu_xla_flag(os.environ.get("XLA_FLAGS", ""), jaxlib):
        os.environ["XLA_FLAGS"] = flags
    env = huge_pages_environment(dict(os.environ), platform.libc_ver(), transparent_huge_pages_mode())
    if restart and env is not None and sys.executable:
        if announce:
            print(f"restarting once with GLIBC_TUNABLES={env['GLIBC_TUNABLES']} (huge pages; "
                  f"MNIST_DIFFUSION_HUGE_PAGES=0 skips this)", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os.execve(sys.executable, list(sys.orig_argv), env)


def machine_description() -> str:
    """E.g. 'cpu x1 (Intel(R) Xeon(R) Processor, 2 cores)' or 'gpu x1 (NVIDIA H100 80GB HBM3, 16 cores)';
    with several processes, 'cpu x2 in 2 processes (...)'."""
    import jax

    devices, info = jax.devices(), Path("/proc/cpuinfo")
    kind = getattr(devices[0], "device_kind", "")
    if jax.default_backend() == "cpu" or not kind:
        lines = info.read_text().splitlines() if info.is_file() else []
        kind = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")),
                    platform.processor() or platform.machine())
    processes = f" in {jax.process_count()} processes" if jax.process_count() > 1 else ""
    return f"{jax.default_backend()} x{len(devices)}{processes} ({kind}, {os.cpu_count()} cores)"


def cpu_times() -> np.ndarray | None:
    """The machine's CPU time counters from /proc/stat (user ... steal), or None where there are none."""
    stat = Path("/proc/stat")
    return np.array(stat.read_text().split()[1:9], dtype=float) if stat.is_file() else None


def steal_share(before: np.ndarray | None) -> float | None:
    """Share of the CPU time since `before` that the hypervisor gave to other machines ("steal"):
    time a virtual machine's loop waited that no change to our code can win back."""
    after = cpu_times()
    return None if before is None or after is None else round(float((after - before)[7] / (after - before).sum()), 3)
