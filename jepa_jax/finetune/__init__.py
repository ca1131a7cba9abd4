"""End-to-end fine-tuning of a pretrained encoder with a classification head
(``python -m jepa_jax.finetune --config=configs/finetune/<name>.py --workdir=DIR``): ``config``
(the schema), ``settings`` (read once into typed ``Settings``), ``augment`` (label smoothing,
mixup/cutmix inside jit), ``model`` (heads, layer-wise LR decay), ``run`` (the program on the
shared loop shell, multi-view testing).
"""
