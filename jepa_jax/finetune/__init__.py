"""End-to-end fine-tuning of a pretrained encoder with a classification head
(``python -m jepa_jax.finetune --config=configs/finetune/<name>.py --workdir=DIR``).

* ``config``  - the config schema (``base_finetune_config``);
* ``settings`` - the config read once into typed ``Settings`` (the rest take them);
* ``augment`` - label smoothing and mixup/cutmix on video clips (pure, inside jit);
* ``model``   - the heads (attentive probe or mean-pool + linear) and layer-wise LR decay;
* ``run``     - the training loop: checkpoints, exact resume, metrics, multi-view testing.
"""
