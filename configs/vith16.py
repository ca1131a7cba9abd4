"""V-JEPA ViT-H/16 pretraining, as the paper (configs/pretrain/vith16.yaml of the reference):
224 px, 16 frames x stride 4, batch 3072, 90k steps (300 x 300, schedules over 1.25x).

python -m jepa_jax.main --config=configs/vith16.py --workdir=gs://BUCKET/vith16
"""
from jepa_jax.pretrain import defaults


def get_config():
  c = defaults.base_config()
  c.model.name = "huge"
  c.batch_size = 3072
  c.data.datasets = ["/path/to/kinetics710_index.csv", "/path/to/ssv2_index.csv",
                     "/path/to/howto100m_index.csv"]
  c.data.num_workers = 12
  # ViT-H: shard parameters and optimiser state over 8 devices per data-parallel group and keep
  # only the blocks' weight matmuls for the backward ("dots_no_batch"; "dots" would also keep the
  # attention logits). At 24 clips per chip that is ~46 GiB (80/95 GiB chips); 16 GiB chips
  # (v4, v5e) need --config.model.remat=full (~13 GiB). BENCHMARKS.md has the table (CPU estimates).
  c.mesh.fsdp = 8
  c.model.remat = "dots_no_batch"
  c.model.scan = True
  return c
