"""The typed settings of eval and fine-tuning (``eval.settings.read``, ``finetune.settings.read``):
every config field read once, one line naming the field for a bad value, and no module below them
reading a raw config."""
import ast
import dataclasses
import pathlib

import pytest

from jepa_jax.errors import ConfigError
from jepa_jax.eval import config as eval_config
from jepa_jax.eval import settings as eval_settings
from jepa_jax.finetune import config as ft_config
from jepa_jax.finetune import settings as ft_settings

REPO = pathlib.Path(__file__).resolve().parents[1]
# Sections the settings pass through as written: the data pipeline's (it has its own reader) and
# the encoder's architecture (merged with the checkpoint's by eval/encoder.py).
PASSED_THROUGH = ("data", "model")

PROGRAMS = {"eval": (eval_config.base_eval_config, eval_settings.read),
            "finetune": (ft_config.base_finetune_config, ft_settings.read)}


def _leaves(config, prefix=()):
  for key, value in config.items():
    if hasattr(value, "items") and key not in PASSED_THROUGH:
      yield from _leaves(value, prefix + (key,))
    else:
      yield prefix + (key,), value


def _plain(value):
  if dataclasses.is_dataclass(value):
    return {k: _plain(v) for k, v in dataclasses.asdict(value).items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  if isinstance(value, dict):
    return {k: _plain(v) for k, v in value.items()}
  return value


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_every_config_field_is_read_into_the_settings(program):
  """Each field of the base config has a settings field of the same path and value (a new config
  field that ``read`` does not read fails here), and the settings hold nothing else."""
  base, read = PROGRAMS[program]
  config = base()
  settings = read(config)
  paths = set()
  for path, value in _leaves(config):
    got = settings
    for name in path:
      assert hasattr(got, name), f"config.{'.'.join(path)} is not read by {program}.settings.read"
      got = getattr(got, name)
    want = value.to_dict() if hasattr(value, "to_dict") else value
    got = got.to_dict() if hasattr(got, "to_dict") else got
    assert _plain(got) == _plain(want), ".".join(path)
    paths.add(path)

  def fields(obj, prefix=()):
    for f in dataclasses.fields(obj):
      value = getattr(obj, f.name)
      if dataclasses.is_dataclass(value):
        yield from fields(value, prefix + (f.name,))
      else:
        yield prefix + (f.name,)

  assert set(fields(settings)) == paths


@pytest.mark.parametrize("program,field,value", [
    ("eval", "num_views", 0), ("eval", "optim.weight_decay_on", "biases"),
    ("eval", "probe.dtype", "float16"), ("eval", "view_aggregation", "max"),
    ("eval", "encoder_dtype", "int8"), ("eval", "checkpoint_key", "ema"),
    ("eval", "cache_dtype", "float16"), ("eval", "lowshot.fractions", (0.0,)),
    ("eval", "feature_layer", "last"), ("eval", "mesh.fsdp", 0), ("eval", "batch_size", -8),
    ("finetune", "head.kind", "mlp"), ("finetune", "mesh.data", 0),
    ("finetune", "nonfinite", "ignore"), ("finetune", "optim.lr_batch_base", 0),
    ("finetune", "save.every", 0), ("finetune", "test_views", 0),
    ("finetune", "num_classes", 0), ("finetune", "mixup.prob", -1.0),
])
def test_a_bad_value_is_one_line_naming_the_field(program, field, value):
  base, read = PROGRAMS[program]
  config = base()
  config.update_from_flattened_dict({field: value})
  with pytest.raises(ConfigError) as e:
    read(config)
  message = str(e.value)
  assert "\n" not in message and f"config.{field}" in message, message


def test_a_probe_grid_entry_must_name_optim_fields():
  config = eval_config.base_eval_config()
  config.probe_grid = [dict(lr=1e-3), dict(learning_rate=1.0)]
  with pytest.raises(ConfigError, match=r"config.probe_grid\[1\] sets \['learning_rate'\]"):
    eval_settings.read(config)
  config.probe_grid = [dict(lr="fast")]
  with pytest.raises(ConfigError, match=r"config.probe_grid\[0\].lr='fast' must be a number"):
    eval_settings.read(config)


def test_a_saved_finetuning_config_reads_with_defaults_for_missing_fields():
  saved = dict(head=dict(kind="attentive", depth=2, dtype="float32"), view_aggregation="logits",
               model=dict(name="tiny"), num_classes=7, data=dict(crop_size=64))
  s = ft_settings.read_saved(saved)
  assert (s.head.kind, s.head.depth, s.head.mlp_ratio) == ("attentive", 2, 4.0)
  assert s.view_aggregation == "logits" and s.num_classes == 7 and s.model["name"] == "tiny"
  assert s.data.crop_size == 64 and s.nonfinite == "stop"


# Modules that read the ConfigDict itself: the schemas, the readers, and the encoder loader, whose
# encoder fields (checkpoint, checkpoint_key, encoder_dtype, model...) the settings keep under
# their config names so that it reads Settings and the tools' ConfigDicts alike.
READERS = {"eval/config.py", "eval/settings.py", "eval/encoder.py", "finetune/config.py",
           "finetune/settings.py"}
CONFIG_NAMES = {"config", "cfg"}
# ConfigDict methods a driver may call on the config it passes to ``read``: copying it and
# applying a command's overrides, never reading a field.
WRITER_METHODS = {"copy_and_resolve_references", "update_from_flattened_dict"}


def _raw_config_reads(source: str, name: str) -> list[str]:
  out = []
  for node in ast.walk(ast.parse(source)):
    target = None
    if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
      target = node.value
      if isinstance(target, ast.Name) and node.attr in WRITER_METHODS:
        continue
    elif isinstance(node, ast.Subscript):
      target = node.value
    if isinstance(target, ast.Name) and target.id in CONFIG_NAMES:
      out.append(f"{name}:{node.lineno}: {ast.unparse(node)}")
    # The entry points parse --config with ml_collections.config_flags; nothing else needs it.
    if isinstance(node, ast.Import) and any(
        a.name.split(".")[0] == "ml_collections" for a in node.names) or (
        isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "ml_collections"
        and [a.name for a in node.names] != ["config_flags"]):
        out.append(f"{name}:{node.lineno}: imports ml_collections")
  return out


def test_only_the_settings_modules_read_a_raw_config():
  """Below ``read``, eval and fine-tuning take typed settings: no module of theirs (but the
  readers) reads a field of a ConfigDict named config/cfg or imports ml_collections."""
  modules = [p for d in ("eval", "finetune") for p in sorted((REPO / "jepa_jax" / d).glob("*.py"))
             if f"{d}/{p.name}" not in READERS]
  assert len(modules) > 10
  offending = [line for p in modules
               for line in _raw_config_reads(p.read_text(), str(p.relative_to(REPO)))]
  assert not offending, "\n".join(offending)


def test_the_ast_check_sees_a_raw_config_read():
  found = _raw_config_reads("import ml_collections\ndef f(config, cfg):\n  a = config.epochs\n"
                            "  b = cfg['x']\n  config.update_from_flattened_dict({})\n"
                            "  config.epochs = 1\n", "m.py")
  assert found[0] == "m.py:1: imports ml_collections"
  found = found[1:]
  assert [line.split(": ", 1)[1] for line in found] == ["config.epochs", "cfg['x']"]


def test_the_drivers_refuse_a_bad_value_before_loading_or_writing_anything(tmp_path):
  """``evaluate``/``finetune`` read their config first: a bad field is reported before the
  (missing) checkpoint and index files are opened, and nothing is written to the workdir."""
  from jepa_jax.eval import run as eval_run  # noqa: PLC0415
  from jepa_jax.finetune import run as ft_run  # noqa: PLC0415
  missing = str(tmp_path / "missing")
  for base, run, field, value in (
      (eval_config.base_eval_config, eval_run.evaluate, "view_aggregation", "max"),
      (ft_config.base_finetune_config, ft_run.finetune, "head.kind", "mlp")):
    config = base()
    config.update_from_flattened_dict({"checkpoint": missing, "train_index": missing + ".csv",
                                       "val_index": missing + ".csv", field: value})
    workdir = tmp_path / field
    with pytest.raises(ConfigError, match=f"config.{field} must be one of"):
      run(config, str(workdir))
    assert not workdir.exists()
