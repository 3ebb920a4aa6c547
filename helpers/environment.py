"""Process environment for a tutorial that uses TensorFlow (data only) next to JAX (everything else)."""

import os
import platform
import sys
from importlib import metadata
from pathlib import Path

#: Variables set before TensorFlow or JAX is imported, as the reference tutorial lists them.
GPU_MEMORY_VARIABLES = {
    "TF_CPP_MIN_LOG_LEVEL": "2",  # TensorFlow: warnings and errors only
    "TF_FORCE_GPU_ALLOW_GROWTH": "true",  # TensorFlow: never pre-allocate GPU memory
    "XLA_PYTHON_CLIENT_PREALLOCATE": "false",  # JAX: do not pre-allocate GPU memory
    "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.8",  # JAX: use at most 80% of the GPU
}


#: XLA:CPU flags added to $XLA_FLAGS (name -> value), each only when the user's $XLA_FLAGS does not
#: already set it. jaxlib 0.10 hands every convolution to YNNPACK by default; on this UNet's 3x3
#: convolutions XLA's own (Eigen) kernels are up to twice as fast (forward 181-199 GFLOP/s against
#: 77-99 at 32x32 maps, weight gradient 64-162 against 19-79) and a whole train step 1.2x (`cpu`
#: preset) to 1.6-1.9x (UNet 32/64/128) faster on 2 Xeon cores (docs/performance.md).
#: "-individual_convolution" removes only convolutions from YNNPACK's list.
CPU_XLA_FLAGS = {"xla_cpu_experimental_ynn_fusion_type": "-individual_convolution"}

#: The oldest jaxlib whose XLA is known to have the flags above (XLA aborts on a flag it does not know).
CPU_XLA_FLAGS_MIN_JAXLIB = (0, 10)


#: glibc tunable that makes malloc ask the kernel for transparent huge pages (2 MB instead of 4 KB)
#: on the large blocks it maps. XLA:CPU allocates the temporaries of a jitted step as one block
#: (1.6 GB for UNet 32/64/128 at batch 128) and frees it when the step ends, so every step faulted
#: those pages in again: 411k page faults and ~1 s of system time per step on 2 cores (the `cpu`
#: preset: 11k per step). With huge pages, 2-4k per step; the `cpu` preset's step ~10% faster
#: (docs/performance.md). glibc reads it only at start-up, hence `restart_with_huge_pages`.
HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"


def transparent_huge_pages_mode(path: str = "/sys/kernel/mm/transparent_hugepage/enabled") -> str | None:
    """The kernel's transparent-huge-page mode ("always", "madvise" or "never"); None if unknown."""
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    return text[text.index("[") + 1:text.index("]")] if "[" in text and "]" in text else None


def huge_pages_environment(environ: dict[str, str], libc: tuple[str, str], thp_mode: str | None
                           ) -> dict[str, str] | None:
    """The environment to restart with ($GLIBC_TUNABLES plus `HUGE_PAGES_TUNABLE`), or None where
    that changes nothing: not glibc 2.35 or newer, the kernel's mode is not "madvise" ("always"
    gives huge pages anyway, "never" cannot), $GLIBC_TUNABLES already sets it (also what stops a
    second restart), or $MNIST_DIFFUSION_HUGE_PAGES is "0"."""
    name, version = libc
    tunables = environ.get("GLIBC_TUNABLES", "")
    if (environ.get("MNIST_DIFFUSION_HUGE_PAGES", "1") == "0" or name != "glibc"
            or _version(version) < (2, 35) or thp_mode != "madvise" or "glibc.malloc.hugetlb" in tunables):
        return None
    return {**environ, "GLIBC_TUNABLES": f"{tunables}:{HUGE_PAGES_TUNABLE}" if tunables else HUGE_PAGES_TUNABLE}


def restart_with_huge_pages() -> None:
    """Scripts call this under `if __name__ == "__main__"`: restart the same command once with
    `huge_pages_environment` when it applies (the process is replaced; nothing has run yet)."""
    env = huge_pages_environment(dict(os.environ), platform.libc_ver(), transparent_huge_pages_mode())
    if env is not None and sys.executable:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, list(sys.orig_argv), env)


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def cpu_xla_flags_known(jaxlib_version: str | None) -> bool:
    """Whether this jaxlib (None: not installed) is at least `CPU_XLA_FLAGS_MIN_JAXLIB`."""
    return jaxlib_version is not None and _version(jaxlib_version) >= CPU_XLA_FLAGS_MIN_JAXLIB


def xla_cpu_flags(current: str, jaxlib_version: str | None) -> str:
    """$XLA_FLAGS with `CPU_XLA_FLAGS` appended: a flag the user already set is kept as the user set it,
    and nothing is added for a jaxlib older than `CPU_XLA_FLAGS_MIN_JAXLIB` (or none installed)."""
    if not cpu_xla_flags_known(jaxlib_version):
        return current
    flags = current.split()
    for name, value in CPU_XLA_FLAGS.items():
        if not any(f.lstrip("-").split("=")[0] == name for f in flags):
            flags.append(f"--{name}={value}")
    return " ".join(flags)


def _jaxlib_version() -> str | None:
    try:
        return metadata.version("jaxlib")
    except metadata.PackageNotFoundError:
        return None


def cache_root() -> Path:
    """$MNIST_DIFFUSION_CACHE, else ~/.cache/mnist_diffusion_jax (classifier, compiled programs)."""
    return Path(os.environ.get("MNIST_DIFFUSION_CACHE", Path.home() / ".cache" / "mnist_diffusion_jax")).expanduser()


def configure_environment() -> dict[str, str]:
    """Set the GPU-memory variables (keeping any value the user already set), add `CPU_XLA_FLAGS` to
    $XLA_FLAGS (read when JAX first starts a backend, so import `helpers` before computing anything),
    and turn on JAX's persistent compilation cache (unless already configured), so a second run of a
    notebook or script reuses its compiled programs instead of compiling them again. Returns the
    variables."""
    for name, value in GPU_MEMORY_VARIABLES.items():
        os.environ.setdefault(name, value)
    flags = xla_cpu_flags(os.environ.get("XLA_FLAGS", ""), _jaxlib_version())
    if flags:
        os.environ["XLA_FLAGS"] = flags
    if os.environ.get("MNIST_DIFFUSION_JAX_CACHE", "1") != "0":
        import jax

        if not jax.config.jax_compilation_cache_dir:
            jax.config.update("jax_compilation_cache_dir", str(cache_root() / "jax"))
            # many small programs (parameter initialisers, samplers) compile in well under a second
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return {name: os.environ[name] for name in GPU_MEMORY_VARIABLES}
