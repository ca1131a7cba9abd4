"""Frozen evaluation of V-JEPA encoders with the attentive probe (the paper's Sections 4-5).

``python -m jepa_jax.eval --config=configs/eval/<task>.py --workdir=DIR`` (see ``__main__``);
``python -m jepa_jax.eval.compare`` for the demo's pretrained-vs-random table.

Modules: ``config`` (the schema), ``settings`` (the config read once into typed ``Settings``,
which every other module takes), ``encoder`` (loading the frozen encoder; clips -> tokens with
segments and views), ``probe`` (probe, optimiser, jitted steps, view averaging), ``lowshot``
(per-class balanced splits), ``features`` (the in-memory feature cache, shared with
``jepa_jax.extract``), ``placement`` (devices), ``run`` (the driver: caching, training,
results.json; ``config.train=False`` evaluates a saved probe),
``compare`` (the demo comparison).
"""
