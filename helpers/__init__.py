"""Helpers shared by the mnist-diffusion-jax notebooks and scripts.

Importing this package first sets the GPU-memory environment variables the reference tutorial
lists (only where the user has not set them): TensorFlow, used by TFDS to prepare the dataset,
must never grab GPU memory from JAX. They must be set before TensorFlow or JAX is imported,
which is why this happens here, at the top of the package. It also adds the XLA:CPU flags of
`helpers.environment.CPU_XLA_FLAGS` to $XLA_FLAGS (convolutions on XLA's own kernels), which JAX
reads when it first computes: import `helpers` before running any JAX code.
"""

from helpers.environment import configure_environment

configure_environment()

__all__ = ["configure_environment"]
