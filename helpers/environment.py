"""Process environment for a tutorial that uses TensorFlow (data only) next to JAX (everything else)."""

import os

#: Variables set before TensorFlow or JAX is imported, as the reference tutorial lists them.
GPU_MEMORY_VARIABLES = {
    "TF_CPP_MIN_LOG_LEVEL": "2",  # TensorFlow: warnings and errors only
    "TF_FORCE_GPU_ALLOW_GROWTH": "true",  # TensorFlow: never pre-allocate GPU memory
    "XLA_PYTHON_CLIENT_PREALLOCATE": "false",  # JAX: do not pre-allocate GPU memory
    "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.8",  # JAX: use at most 80% of the GPU
}


def configure_environment() -> dict[str, str]:
    """Set the GPU-memory variables (keeping any value the user already set); return them."""
    for name, value in GPU_MEMORY_VARIABLES.items():
        os.environ.setdefault(name, value)
    return {name: os.environ[name] for name in GPU_MEMORY_VARIABLES}
