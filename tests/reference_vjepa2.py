"""Optional access to the V-JEPA 2 reference modules (facebookresearch/vjepa2), for tests that
build them: ``JEPA_JAX_VJEPA2_SRC=/path/to/vjepa2-checkout python -m pytest ...``.

Nothing is downloaded: without the variable (or without torch) the tests that need the reference
skip. The reference imports ``timm`` only for ``drop_path``, which is the identity at the drop-path
rate 0 used here; when timm is not installed a stand-in module provides exactly that.
"""
import os
import sys
import types

import pytest

ENV = "JEPA_JAX_VJEPA2_SRC"


def reference():
  """``SimpleNamespace(torch, vit, predictor, pooler)`` or a pytest skip."""
  root = os.environ.get(ENV)
  if not root or not os.path.isfile(os.path.join(root, "src", "models", "vision_transformer.py")):
    pytest.skip(f"set {ENV} to a facebookresearch/vjepa2 checkout to compare with its modules")
  torch = pytest.importorskip("torch")
  try:
    import timm.models.layers  # noqa: F401
  except ImportError:
    layers = types.ModuleType("timm.models.layers")
    layers.drop_path = lambda x, drop_prob=0.0, training=False: x
    sys.modules.setdefault("timm", types.ModuleType("timm"))
    sys.modules.setdefault("timm.models", types.ModuleType("timm.models"))
    sys.modules["timm.models.layers"] = layers
  if root not in sys.path:
    sys.path.insert(0, root)
  import src.models.attentive_pooler as pooler  # noqa: PLC0415
  import src.models.predictor as predictor  # noqa: PLC0415
  import src.models.vision_transformer as vit  # noqa: PLC0415
  return types.SimpleNamespace(torch=torch, vit=vit, predictor=predictor, pooler=pooler)


def numpy_state(module) -> dict:
  return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}
