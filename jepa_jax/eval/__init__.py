"""Frozen evaluation of V-JEPA encoders with the attentive probe (the paper's Sections 4-5).

``python -m jepa_jax.eval --config=configs/eval/<task>.py --workdir=DIR`` (see ``__main__``);
``python -m jepa_jax.eval.compare`` for the demo's pretrained-vs-random table. ``settings`` reads
the config once into the typed ``Settings`` every other module takes; ``run`` is the driver; the
rest are its parts, shared with fine-tuning, predict and extract (ARCHITECTURE.md, "Who owns what").
"""
