"""Helpers shared by the mnist-diffusion-jax notebooks and scripts.

Importing the package sets the reference tutorial's four GPU-memory variables (where the user has
not set them), because TensorFlow and JAX read them when they start: import `helpers` before
either. Nothing else changes; `helpers.environment.tune_for_cpu()` is the explicit CPU tuning."""

from helpers.environment import set_gpu_memory_variables

set_gpu_memory_variables()
