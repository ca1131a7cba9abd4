"""JAX's persistent compilation cache, switched on from a config field.

A compiled train step is written to ``dir`` keyed by the program, the devices and the versions;
a later run of the same config (a restart after preemption, a requeued SLURM job, the next
benchmark) loads it instead of compiling again. ``config.compilation_cache_dir`` ("": off,
unless JAX's own ``JAX_COMPILATION_CACHE_DIR`` environment variable is set) may be a local path
or, on TPU pods, a ``gs://`` bucket path shared by all hosts. Measured figures: BENCHMARKS.md.
"""
import os

import jax

# Cache every compile that takes at least this long (JAX's default, 1 s, skips small programs
# such as the sharded init, which compile in well under a second anyway).
MIN_COMPILE_SECONDS = 1.0


def enable(cache_dir) -> str | None:
  """Point JAX's persistent cache at ``cache_dir`` (no-op for "" / None); returns the directory in
  use (``JAX_COMPILATION_CACHE_DIR`` when ``cache_dir`` is empty)."""
  if not cache_dir:
    return os.environ.get("JAX_COMPILATION_CACHE_DIR") or None
  cache_dir = str(cache_dir)
  if "://" not in cache_dir:
    cache_dir = os.path.abspath(os.path.expanduser(cache_dir))
    os.makedirs(cache_dir, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", cache_dir)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
  return cache_dir
