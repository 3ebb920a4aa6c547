"""Process environment for a tutorial that uses TensorFlow (data only) next to JAX (everything else)."""

import os
from pathlib import Path

#: Variables set before TensorFlow or JAX is imported, as the reference tutorial lists them.
GPU_MEMORY_VARIABLES = {
    "TF_CPP_MIN_LOG_LEVEL": "2",  # TensorFlow: warnings and errors only
    "TF_FORCE_GPU_ALLOW_GROWTH": "true",  # TensorFlow: never pre-allocate GPU memory
    "XLA_PYTHON_CLIENT_PREALLOCATE": "false",  # JAX: do not pre-allocate GPU memory
    "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.8",  # JAX: use at most 80% of the GPU
}


def cache_root() -> Path:
    """$MNIST_DIFFUSION_CACHE, else ~/.cache/mnist_diffusion_jax (classifier, compiled programs)."""
    return Path(os.environ.get("MNIST_DIFFUSION_CACHE", Path.home() / ".cache" / "mnist_diffusion_jax")).expanduser()


def configure_environment() -> dict[str, str]:
    """Set the GPU-memory variables (keeping any value the user already set) and turn on JAX's
    persistent compilation cache (unless already configured), so a second run of a notebook or
    script reuses its compiled programs instead of compiling them again. Returns the variables."""
    for name, value in GPU_MEMORY_VARIABLES.items():
        os.environ.setdefault(name, value)
    if os.environ.get("MNIST_DIFFUSION_JAX_CACHE", "1") != "0":
        import jax

        if not jax.config.jax_compilation_cache_dir:
            jax.config.update("jax_compilation_cache_dir", str(cache_root() / "jax"))
            # many small programs (parameter initialisers, samplers) compile in well under a second
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return {name: os.environ[name] for name in GPU_MEMORY_VARIABLES}
