"""V-JEPA ViT-L/16 pretraining, as the paper (configs/pretrain/vitl16.yaml of the reference).

python -m jepa_jax.main --config=configs/vitl16.py --workdir=gs://BUCKET/vitl16 \
    --config.data.datasets='("/data/k710.csv","/data/ssv2.csv","/data/howto100m.csv")'
"""
from jepa_jax.pretrain import defaults


def get_config():
  c = defaults.base_config()
  c.model.name = "large"
  c.batch_size = 3072
  # VideoMix2M: replace with your index files (``path label`` lines, see README "Data").
  c.data.datasets = ["/path/to/kinetics710_index.csv", "/path/to/ssv2_index.csv",
                     "/path/to/howto100m_index.csv"]
  c.data.datasets_weights = None  # the reference samples each video uniformly over the mix
  c.data.num_workers = 12
  # No remat, as the reference (24 clips per 80 GB GPU). On 16 GiB chips (v4, v5e) add
  # --config.model.remat=full; launch/README.md has the per-chip memory table.
  # Scan over blocks: one block compiled per stack instead of 24 (compile time, BENCHMARKS.md).
  c.model.scan = True
  return c
