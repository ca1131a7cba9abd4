"""Adam's moments of a jepa_jax pretraining state <-> the ``opt`` entry of the reference's training
checkpoints (``torch.optim.AdamW.state_dict()``), so that a run moves between the two and resumes.

The reference's ``init_opt`` (``app/vjepa/utils.py``, V-JEPA and V-JEPA 2) builds one AdamW over
four groups, each in ``named_parameters()`` order: 0/1 the encoder's / predictor's weight-decayed
parameters (not a bias, not 1-D), 2/3 their biases and 1-D parameters (``WD_exclude``). A state
dict numbers parameters 0, 1, ... across the groups in that order and keeps, per updated parameter,
``step``, ``exp_avg``, ``exp_avg_sq``: optax's ``count``, ``mu``, ``nu`` in torch's layout. The
fixed sin-cos tables are parameters there too (``requires_grad=False``: numbered, never updated,
no state). ``named_parameters()`` lists a module's own parameters before its submodules', which
come in ``__init__`` order (``param_order``, ``_MODULE_RANK``).
"""
from typing import Mapping

import numpy as np

from jepa_jax.convert.names import ConversionError, POSITION_BUFFERS

# Rank of each top-level module in the reference's ``__init__`` (V-JEPA and V-JEPA 2 alike).
_MODULE_RANK = {"encoder": ("pos_embed", "patch_embed", "blocks", "norm"),
                "predictor": ("predictor_pos_embed", "predictor_embed", "mask_tokens",
                              "predictor_blocks", "predictor_norm", "predictor_proj")}
# A block's parameters: norm1, attn (qkv, proj), norm2, mlp (fc1, fc2); weight before bias.
_BLOCK_RANK = ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")


def _order_key(name: str, kind: str):
  parts = name.split(".")
  module = parts[0]
  if module not in _MODULE_RANK[kind]:
    raise ConversionError(f"unknown {kind} parameter {name!r}: cannot place it in the reference's "
                          "optimiser order")
  key = [_MODULE_RANK[kind].index(module)]
  if module in ("blocks", "predictor_blocks"):
    inner = ".".join(parts[2:-1])
    key += [int(parts[1]), _BLOCK_RANK.index(inner)]
  elif module == "mask_tokens":
    key += [int(parts[1])]
  return key + [0 if parts[-1] == "weight" else 1]


def param_order(state: Mapping, kind: str) -> list:
  """The names of a (prefix-free) reference state dict in ``named_parameters()`` order."""
  return sorted(state, key=lambda n: _order_key(n, kind))


def _decays(name: str, shape) -> bool:
  return "bias" not in name and len(shape) != 1


def param_groups(states: Mapping[str, Mapping]) -> list:
  """``init_opt``'s four groups of ``(kind, name)``, from ``{"encoder", "predictor"}`` state dicts
  (prefix-free, tables included where the model has them)."""
  ordered = {kind: param_order(states[kind], kind) for kind in ("encoder", "predictor")}
  return [[(kind, n) for n in ordered[kind] if _decays(n, states[kind][n].shape) == decay]
          for decay in (True, False) for kind in ("encoder", "predictor")]


def export_adamw(states: Mapping[str, Mapping], mu: Mapping[str, Mapping],
                 nu: Mapping[str, Mapping], count: int, hyperparams: Mapping) -> dict:
  """``torch.optim.AdamW.state_dict()`` of ``init_opt``'s optimiser.

  ``states``: the exported ``{"encoder", "predictor"}`` state dicts (prefix-free); ``mu``/``nu``:
  Adam's moments in the same names and layout; ``count``: updates made; ``hyperparams``: the
  ``learning_rate``, ``weight_decay``, ``b1``, ``b2``, ``eps`` of the last update (the reference's
  schedulers set ``lr`` and ``weight_decay`` on every group at each step)."""
  state, groups, index = {}, [], 0
  for g, members in enumerate(param_groups(states)):
    group = dict(lr=float(hyperparams["learning_rate"]),
                 betas=(float(hyperparams["b1"]), float(hyperparams["b2"])),
                 eps=float(hyperparams["eps"]),
                 weight_decay=float(hyperparams["weight_decay"]) if g < 2 else 0.0,
                 amsgrad=False, maximize=False, foreach=None, capturable=False,
                 differentiable=False, fused=None, params=[])
    if g >= 2:
      group["WD_exclude"] = True
    for kind, name in members:
      group["params"].append(index)
      if name not in POSITION_BUFFERS and count > 0:
        state[index] = {"step": np.asarray(count, np.float32),
                        "exp_avg": np.asarray(mu[kind][name], np.float32),
                        "exp_avg_sq": np.asarray(nu[kind][name], np.float32)}
      index += 1
    groups.append(group)
  return {"state": state, "param_groups": groups}


def import_adamw(opt: Mapping, states: Mapping[str, Mapping]) -> tuple[dict, dict, int]:
  """``(mu, nu, count)`` in reference names (``{"encoder", "predictor"}`` dicts) from an ``opt``
  entry, placed by ``init_opt``'s order over ``states`` (the file's own state dicts); parameters
  never updated get zero moments."""
  groups = param_groups(states)
  saved = opt.get("param_groups") if isinstance(opt, Mapping) else None
  if not saved or [len(g.get("params", ())) for g in saved] != [len(g) for g in groups]:
    sizes = [len(g.get("params", ())) for g in saved] if saved else None
    raise ConversionError(
        f"the file's optimiser state has groups of {sizes} parameters where the reference's "
        f"init_opt gives {[len(g) for g in groups]} for these models; it was not saved by the "
        "reference's pretraining (or by --to-torch --resumable): convert without --resumable")
  per_index = opt.get("state") or {}
  mu, nu, counts = {"encoder": {}, "predictor": {}}, {"encoder": {}, "predictor": {}}, set()
  for saved_group, members in zip(saved, groups):
    for index, (kind, name) in zip(saved_group["params"], members):
      shape = np.shape(states[kind][name])
      entry = per_index.get(index, per_index.get(str(index)))
      if name in POSITION_BUFFERS:
        continue
      if entry is None:
        mu[kind][name] = nu[kind][name] = np.zeros(shape, np.float32)
        continue
      for key in ("exp_avg", "exp_avg_sq"):
        if tuple(np.shape(entry[key])) != tuple(shape):
          raise ConversionError(f"optimiser state {index} ({kind} {name}) has {key} of shape "
                                f"{tuple(np.shape(entry[key]))}, the parameter {tuple(shape)}")
      mu[kind][name] = np.asarray(entry["exp_avg"], np.float32)
      nu[kind][name] = np.asarray(entry["exp_avg_sq"], np.float32)
      counts.add(int(np.asarray(entry["step"])))
  if len(counts) > 1:
    raise ConversionError(f"the optimiser state's parameters were updated different numbers of "
                          f"times ({sorted(counts)}); jepa_jax's Adam keeps one count")
  return mu, nu, counts.pop() if counts else 0

