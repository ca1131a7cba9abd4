"""Resumable exports: a pretraining state's AdamW moments <-> the reference's ``opt`` entry
(``torch.optim.AdamW.state_dict()`` of app/vjepa/utils.py's ``init_opt``), both ways."""
import os

import jax
import numpy as np
import optax
import pytest

from jepa_jax import checkpoint, convert
from jepa_jax.config_fields import config_to_json
from jepa_jax.convert import optimizer, reference
from jepa_jax.convert.__main__ import main as cli
from jepa_jax.pretrain import train_state
from test_convert import PREFIX, TINY_FLAGS, released

STEP = 6


@pytest.fixture(scope="module")
def run_workdir(golden, tmp_path_factory):
  """A tiny pretraining checkpoint at step 6 with random Adam moments (as after 6 updates)."""
  _, config = convert.convert_state_dicts(released(golden), "tiny", **TINY_FLAGS)
  config.optim.ipe = 4
  exp = reference._experiment(config)
  rng = np.random.default_rng(0)
  params = jax.tree_util.tree_map(lambda s: rng.normal(size=s.shape).astype(np.float32),
                                  exp.abstract_state.params)  # no model init to run
  state = train_state.TrainState.create(params=params, tx=exp.tx)
  noise = lambda tree, scale: jax.tree_util.tree_map(
      lambda x: (scale * np.abs(rng.normal(size=x.shape))).astype(np.float32), tree)
  opt_state = optax.tree_utils.tree_set(state.opt_state, mu=noise(state.params, 1e-3),
                                        nu=noise(state.params, 1e-6))
  opt_state = jax.tree_util.tree_map_with_path(
      lambda p, x: np.full_like(x, STEP) if getattr(p[-1], "name", None) == "count" else x,
      opt_state)
  state = state.replace(step=np.asarray(STEP, np.int32), opt_state=opt_state)
  workdir = str(tmp_path_factory.mktemp("run"))
  manager = checkpoint.make_manager(os.path.join(workdir, "checkpoints"), async_save=False)
  checkpoint.save(manager, STEP, state=state, config=config, force=True)
  manager.wait_until_finished()
  manager.close()
  return workdir, config, state, exp


def _adam(state):
  return reference._adam_state(state.opt_state)


def test_round_trip_keeps_the_moments_exactly(run_workdir, tmp_path):
  torch = pytest.importorskip("torch")
  workdir, config, state, exp = run_workdir
  out = str(tmp_path / "run.pth.tar")
  assert cli(["--to-torch", "--resumable", "--ckpt", workdir, "--out", out]) == 0
  saved = torch.load(out, map_location="cpu", weights_only=True)
  assert saved["epoch"] == STEP // 4 and saved["scaler"]["scale"] == 65536.0
  groups = saved["opt"]["param_groups"]
  assert [g["weight_decay"] > 0 for g in groups] == [True, True, False, False]
  assert all(g.get("WD_exclude") for g in groups[2:])
  # A real AdamW over the file's tensors, numbered as the groups say, takes the state and steps
  # (the reference's own modules: the next test, when JEPA_JAX_VJEPA2_SRC is set).
  states = {k: {n[len(PREFIX):]: v for n, v in saved[k].items()} for k in ("encoder", "predictor")}
  tensors = [torch.nn.Parameter(states[kind][name].clone(), requires_grad="pos_embed" not in name)
             for group in optimizer.param_groups(states) for kind, name in group]
  sizes = [len(g["params"]) for g in groups]
  bounds = np.cumsum([0] + sizes)
  opt = torch.optim.AdamW([{"params": tensors[a:b]} for a, b in zip(bounds[:-1], bounds[1:])])
  opt.load_state_dict(saved["opt"])
  for p in tensors:
    p.grad = torch.zeros_like(p) if p.requires_grad else None
  opt.step()

  config_file = tmp_path / "config.py"
  config_file.write_text("import ml_collections\n\ndef get_config():\n  return "
                         f"ml_collections.ConfigDict({config_to_json(config)!r})\n")
  back = str(tmp_path / "back")
  assert cli(["--from-torch", out, "--resumable", "--config", str(config_file), "--out", back,
              "--model", "tiny", "--embed-dim", "96", "--depth", "2", "--num-heads", "4"]) == 0
  manager = checkpoint.make_manager(os.path.join(back, "checkpoints"), read_only=True,
                                    async_save=False)
  restored, _, step = checkpoint.restore_latest_train_state(manager, exp.sharded_abstract_state)
  assert step == STEP
  assert int(restored.step) == STEP and int(_adam(restored).count) == STEP
  for got, want in ((_adam(restored).mu, _adam(state).mu), (_adam(restored).nu, _adam(state).nu),
                    (restored.params, state.params), (restored.target_params, state.target_params)):
    for x, y in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_file_loads_into_torch_adamw_in_the_reference_group_order(run_workdir, tmp_path):
  """The reference's own modules when available (JEPA_JAX_VJEPA2_SRC), their parameters grouped
  as its init_opt groups them; the moments land on the parameters of the same names."""
  import reference_vjepa2
  ref = reference_vjepa2.reference()
  torch = ref.torch
  workdir, config, state, _ = run_workdir
  out = str(tmp_path / "run.pth.tar")
  reference.write_torch_checkpoint(workdir, out, resumable=True)
  saved = torch.load(out, map_location="cpu", weights_only=True)
  strip = lambda sd: {k[len(PREFIX):]: v for k, v in sd.items()}
  enc = ref.vit.VisionTransformer(img_size=64, patch_size=16, num_frames=8, embed_dim=96, depth=2,
                                  num_heads=4, uniform_power=True, use_sdpa=False)
  enc.load_state_dict(strip(saved["encoder"]), strict=True)
  pred = ref.predictor.vit_predictor(img_size=64, patch_size=16, num_frames=8, embed_dim=96,
                                     predictor_embed_dim=48, depth=2, num_heads=4,
                                     uniform_power=True, use_mask_tokens=True, num_mask_tokens=2,
                                     use_sdpa=False)
  pred.load_state_dict(strip(saved["predictor"]), strict=True)
  # init_opt's four groups (app/vjepa/utils.py), over named_parameters().
  rule = lambda n, p: ("bias" not in n) and (len(p.shape) != 1)
  groups = [{"params": [p for n, p in m.named_parameters() if rule(n, p) == decay]}
            for decay in (True, False) for m in (enc, pred)]
  opt = torch.optim.AdamW(groups, betas=(0.9, 0.999), eps=1e-8)
  opt.load_state_dict(saved["opt"])
  mu = {k: convert.to_torch(convert.unstack_blocks(jax.device_get(_adam(state).mu[k])), k)
        for k in ("encoder", "predictor")}
  checked = 0
  for kind, module in (("encoder", enc), ("predictor", pred)):
    for name, p in module.named_parameters():
      if p.requires_grad:
        np.testing.assert_array_equal(opt.state[p]["exp_avg"].numpy(), mu[kind][name],
                                      err_msg=name)
        assert float(opt.state[p]["step"]) == STEP
        checked += 1
      else:
        assert p not in opt.state  # the fixed tables: numbered, never updated
  assert checked == sum(len(m) for m in mu.values())  # every moment placed
  for p in (p for g in opt.param_groups for p in g["params"]):
    p.grad = torch.zeros_like(p)
  opt.step()  # the reference's next update runs on these moments


def test_import_refuses_files_without_the_reference_groups(golden):
  states = {"encoder": {k[len(PREFIX):]: v for k, v in released(golden)["encoder"].items()},
            "predictor": {k[len(PREFIX):]: v for k, v in released(golden)["predictor"].items()}}
  with pytest.raises(convert.ConversionError, match="without --resumable"):
    optimizer.import_adamw({"state": {}, "param_groups": [{"params": [0, 1]}]}, states)
