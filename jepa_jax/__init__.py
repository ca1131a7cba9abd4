"""jepa_jax: V-JEPA video pretraining and frozen evaluation in JAX/Flax."""

__version__ = "0.1.0"
