"""Weight conversion between the reference PyTorch checkpoints and jepa_jax parameter trees."""
from jepa_jax.convert.names import (ConversionError, from_torch, stack_blocks, strip_prefixes,
                                    to_torch, unstack_blocks)

__all__ = ["ConversionError", "from_torch", "stack_blocks", "strip_prefixes", "to_torch",
           "unstack_blocks"]
