"""bench/reference_step.py: its timing harness and arguments here; the reference step itself only
when a checkout of facebookresearch/jepa is given (``JEPA_REF_DIR``; skipped otherwise)."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))
import reference_step  # noqa: E402


def test_time_steps_times_only_after_warmup_and_syncs_each_step(monkeypatch):
  clock = [0.0]
  monkeypatch.setattr(reference_step.time, "perf_counter", lambda: clock[0])
  durations = [5.0, 4.0, 1.0, 3.0, 2.0]  # the first two are warm-up
  calls = []

  def step(i):
    calls.append(("step", i))
    clock[0] += durations[i]

  def sync():
    calls.append(("sync",))
    clock[0] += 0.5  # a step is not done until the device is: the sync is part of its time

  out = reference_step.time_steps(step, steps=3, warmup=2, sync=sync)
  assert calls == [c for i in range(5) for c in (("step", i), ("sync",))]
  assert out["times"] == [1.5, 3.5, 2.5]
  assert out["step_s"] == 2.5 and out["min_step_s"] == 1.5 and out["first_step_s"] == 5.5
  assert out["step_cpu_s"] >= 0


def test_arguments(monkeypatch):
  monkeypatch.setenv(reference_step.REF_ENV, "/somewhere/jepa")
  args = reference_step.parse_args(["--batch-size", "24"])
  assert args.ref_dir == "/somewhere/jepa" and args.batch_size == 24
  assert args.ref_config == "configs/pretrain/vitl16.yaml"
  assert args.loggers and args.ddp and args.clip  # as train.py runs
  args = reference_step.parse_args(["--no-loggers", "--no-ddp", "--ref-dir", "/x"])
  assert not args.loggers and not args.ddp and args.ref_dir == "/x"
  with pytest.raises(SystemExit):
    reference_step.parse_args(["--steps", "0"])


def test_refuses_a_directory_that_is_not_the_reference(tmp_path):
  with pytest.raises(SystemExit, match="facebookresearch/jepa"):
    reference_step.load_reference(str(tmp_path))


def test_reference_flops_use_our_count_for_its_model_and_lengths():
  """The reference's YAML fields map onto the jepa_jax config whose FLOPs MFU divides by."""
  from configs import vitl16
  from jepa_jax import flops, masks
  from jepa_jax.pretrain import config as config_lib  # noqa: PLC0415
  ours = vitl16.get_config()
  ours.batch_size = 24
  grid = config_lib.token_grid(ours)
  lengths = [masks.static_sizes(grid, masks.MaskConfig.from_dict(m)) for m in ours.masks]
  ref_cfg = {"data": dict(batch_size=24, patch_size=16, tubelet_size=2, crop_size=224,
                          num_frames=16),
             "model": dict(model_name="vit_large", pred_depth=12, pred_embed_dim=384),
             "mask": [dict(num_blocks=8, spatial_scale=[0.15, 0.15]),
                      dict(num_blocks=2, spatial_scale=[0.7, 0.7])]}
  total, tokens = reference_step.reference_flops(ref_cfg, [lengths, lengths])
  assert total == flops.train_step_flops(config_lib.read(ours))["total"] and tokens == 1568
  shorter, _ = reference_step.reference_flops(ref_cfg, [[(360, 744), (99, 1104)]])
  assert shorter < total


@pytest.mark.skipif(not os.environ.get(reference_step.REF_ENV),
                    reason=f"set {reference_step.REF_ENV} to a facebookresearch/jepa checkout")
def test_reference_step_runs_a_tiny_model_on_cpu():
  proc = subprocess.run(
      [sys.executable, str(REPO / "bench" / "reference_step.py"), "--model-name=vit_tiny",
       "--crop-size=64", "--num-frames=4", "--pred-depth=1", "--pred-embed-dim=48",
       "--batch-size=4", "--steps=2", "--warmup=1", "--device=cpu"],
      capture_output=True, text=True, cwd=REPO, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.strip().splitlines()
  assert len(lines) == 1, proc.stdout[-2000:]
  out = json.loads(lines[0])
  assert out["bench"] == "reference_step" and out["steps"] == 2 and out["step_s"] > 0
  assert out["clips_per_s"] == pytest.approx(4 / out["step_s"], rel=1e-2)
  # Batch trimming: every clip keeps the batch minimum, at most the whole grid (2 x 4 x 4).
  assert all(0 < k < 32 for k in out["context_tokens"] + out["target_tokens"])
  assert out["ddp"] and out["loggers"] and out["sdpa"]


def test_commit_of_an_exported_copy_is_its_ref_commit_file_never_the_enclosing_repository(tmp_path):
  """bench/gpu_ref_checkout.sh exports the reference to .ref/jepa inside this repository: git there
  would answer with this repository's HEAD. The copy's REF_COMMIT file names the commit."""
  inside = REPO / ".pytest-ref-copy"
  inside.mkdir(exist_ok=True)
  try:
    assert reference_step._git_commit(str(inside)) is None  # not HEAD of jepa_jax
    (inside / reference_step.REF_COMMIT_FILE).write_text("51c59d5\n")
    assert reference_step._git_commit(str(inside)) == "51c59d5"
  finally:
    for p in inside.iterdir():
      p.unlink()
    inside.rmdir()
  assert reference_step._git_commit(str(tmp_path)) is None
  repo = tmp_path / "jepa"
  subprocess.run(["git", "init", "-q", str(repo)], check=True)
  subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", "commit",
                  "-q", "--allow-empty", "-m", "x"], check=True)
  head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                        text=True, check=True).stdout.strip()
  assert reference_step._git_commit(str(repo)) == head
