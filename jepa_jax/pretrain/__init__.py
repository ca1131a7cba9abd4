"""Pretraining, one of jepa_jax's three programs (pretrain, ``eval``, ``finetune``).

``config`` reads a pretraining ConfigDict once into typed settings (``defaults`` holds the paper's
numbers), ``experiment`` builds a run from them (models, optimiser, mesh, the jitted
``train_step`` over a ``train_state.TrainState``), ``trainer`` runs it in the shared loop shell
(``jepa_jax.loop``) with the collapse ``monitor`` and the online ``probe_monitor``. The command is
``python -m jepa_jax.main`` (or ``python -m jepa_jax.pretrain``).
"""
