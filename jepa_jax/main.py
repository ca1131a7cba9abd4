"""``python -m jepa_jax.main --config=... --workdir=...``: the pretraining command of the design card.

The program lives in ``jepa_jax.pretrain`` (``python -m jepa_jax.pretrain`` is the same command);
this module keeps the documented entry point.
"""
from jepa_jax.pretrain.__main__ import EXIT_PREEMPTED, main, run  # noqa: F401 - the command's API

if __name__ == "__main__":
  run()
