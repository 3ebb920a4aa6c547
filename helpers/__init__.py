"""Helpers shared by the mnist-diffusion-jax notebooks and scripts.

Importing this package first sets the GPU-memory environment variables the reference tutorial
lists (only where the user has not set them): TensorFlow, used by TFDS to prepare the dataset,
must never grab GPU memory from JAX. They must be set before TensorFlow or JAX is imported,
which is why this happens here, at the top of the package.
"""

from helpers.environment import configure_environment

configure_environment()

__all__ = ["configure_environment"]
