"""Class names of the released probes (jepa_jax/labels): the shipped lists against their sources,
and how a converted probe gets them (convert --dataset / inference; predict's default;
--labels overriding). Sources and checks: jepa_jax/labels/README.md."""
import hashlib
import logging

import jax
import numpy as np
import pytest

from jepa_jax import checkpoint, convert, labels, predict
from jepa_jax.convert import reference
from jepa_jax.convert.__main__ import main as convert_cli
from jepa_jax.convert.__main__ import probe_dataset

# open-mmlab/mmaction2 @ 430b0b66fcfc4d8e3d8d8766174e7d0612d6a40b, tools/data/{sthv2,diving48}/
# label_map.txt: the shipped files are byte-for-byte copies.
SOURCE_SHA256 = {
    "ssv2": "c9c5a86ece619e1ab2e7ca0614c85377a534873e17108b13243e5d22089a0a85",
    "diving48": "7832becc4d9326028e29fb2cf5adaade78052030c1791784c6dffc32541fd9e9",
}


def test_shipped_files_are_the_sources_unchanged():
  for dataset, digest in SOURCE_SHA256.items():
    with open(labels.path(dataset), "rb") as f:
      assert hashlib.sha256(f.read()).hexdigest() == digest, dataset


def test_ssv2_list_is_the_labels_file_numbering():
  names = labels.class_names("ssv2")
  assert len(names) == 174 and len(set(names)) == 174
  assert names[0] == "Approaching something with your camera"  # labels.json: "... camera": "0"
  assert names[173] == "Wiping something off of something"
  # transformers' convert_vjepa2_classifier_to_hf.py: the released probes' expected top-1
  # (ssv2-vitl-16x2x3.pt: 145, ssv2-vitg-384-64x2x3.pt: 112), brackets as in its id2label
  for index, expected in ((145, "Stuffing [something] into [something]"),
                          (112, "Putting [something] onto [something]")):
    assert names[index] == expected.replace("[", "").replace("]", "")
  # independent copies: a README citing labels.json ids, a hard-coded id -> template table
  assert names[5] == "Closing something"
  assert names[41] == "Moving something away from the camera"
  assert names[93] == "Pushing something from left to right"
  assert names[160] == "Touching (without moving) part of something"
  assert names == sorted(names)


def test_diving48_list_is_the_vocab_order():
  names = labels.class_names("diving48")
  assert len(names) == 48 and len(set(names)) == 48
  assert all(len(n.split("+")) == 4 for n in names)
  assert names[0] == "Back+15som+05Twis+FREE"
  assert names[47] == "Reverse+Dive+NoTwis+TUCK"
  # transformers' expected top-1 of diving48-vitl-256.pt (35) and diving48-vitg-384-32x4x3.pt (22)
  assert names[35].split("+") == ["Inward", "35som", "NoTwis", "TUCK"]
  assert names[22].split("+") == ["Forward", "25som", "2Twis", "PIKE"]


def test_kinetics400_is_not_shipped_and_says_where_its_order_is():
  assert labels.path("k400") is None and labels.class_names("k400") is None
  assert "jepa#18" in labels.NOT_SHIPPED["k400"] and "--labels" in labels.NOT_SHIPPED["k400"]


@pytest.mark.parametrize("filename, num_classes, want", [
    ("k400-probe.pth.tar", 400, "k400"),
    ("/x/vith16/ssv2-probe.pth.tar", 174, "ssv2"),
    ("ssv2-vitl-16x2x3.pt", 174, "ssv2"),
    ("diving48-vitg-384-32x4x3.pt", 48, "diving48"),
    ("probe.pth.tar", 174, None),            # the count alone is no evidence
    ("ssv2-probe.pth.tar", 400, None),       # name and count disagree
    ("ssv2-probe.pth.tar", 7, None),
    ("k4000-probe.pt", 400, None),           # a token, not a substring
    ("in1k-probe.pth.tar", 1000, None),
])
def test_dataset_of_probe_needs_count_and_name_to_agree(filename, num_classes, want):
  dataset, why = labels.dataset_of_probe(num_classes, filename)
  assert dataset == want, why
  if want is None and num_classes == 174:
    assert "--dataset ssv2" in why


def test_probe_dataset_flag_is_checked_against_the_class_count():
  assert probe_dataset("diving48", 48, "renamed.pt")[:2] == ("diving48",
                                                              labels.class_names("diving48"))
  with pytest.raises(convert.ConversionError, match="Something-Something-v2 has 174 classes"):
    probe_dataset("ssv2", 48, "renamed.pt")
  assert probe_dataset("none", 174, "ssv2-probe.pth.tar")[:2] == (None, None)
  dataset, names, note = probe_dataset(None, 400, "k400-probe.pth.tar")
  assert (dataset, names) == ("k400", None) and "jepa#18" in note


# --- converted probes, end to end --------------------------------------------------------------

def _probe(num_classes):
  cfg = dict(num_classes=num_classes, num_heads=4, depth=1, mlp_ratio=4.0, num_queries=1,
             embed_dim=32, blocks_on="query")
  rng = np.random.default_rng(num_classes)
  params = jax.tree_util.tree_map(lambda s: rng.normal(size=s.shape).astype(np.float32),
                                  reference._abstract_probe(cfg))
  return cfg, params


def _reference_file(tmp_path, name, num_classes):
  """A reference-format probe file (what the reference's eval saves) of ``num_classes``."""
  torch = pytest.importorskip("torch")
  cfg, params = _probe(num_classes)
  state = {k: torch.from_numpy(np.ascontiguousarray(v))
           for k, v in convert.export_probe(params, cfg)["classifier"].items()}
  path = tmp_path / name
  torch.save({"classifier": state, "epoch": 20}, path)
  return path


def _convert(path, out, *flags):
  return convert_cli(["--from-torch", str(path), "--kind", "probe", "--num-heads", "4",
                      "--out", str(out), *flags])


def test_converted_released_ssv2_probe_shows_names_by_default(tmp_path, capsys):
  path = _reference_file(tmp_path, "ssv2-probe.pth.tar", 174)
  assert _convert(path, tmp_path / "probe") == 0
  assert "Something-Something-v2 list saved" in capsys.readouterr().out
  probe = str(tmp_path / "probe")
  assert checkpoint.read_probe_config(probe)["eval"] == {"dataset": "ssv2"}
  assert checkpoint.probe_class_names(probe) == labels.class_names("ssv2")
  assert predict.class_names(None, probe, 174) == labels.class_names("ssv2")
  mine = tmp_path / "mine.txt"
  mine.write_text("".join(f"c{i}\n" for i in range(174)))
  assert predict.class_names(str(mine), probe, 174) == [f"c{i}" for i in range(174)]


def test_renamed_probe_needs_dataset_flag(tmp_path, capsys):
  path = _reference_file(tmp_path, "my_probe.pth.tar", 48)
  assert _convert(path, tmp_path / "guessless") == 0
  assert "--dataset diving48" in capsys.readouterr().out
  assert predict.class_names(None, str(tmp_path / "guessless"), 48) is None
  assert _convert(path, tmp_path / "flagged", "--dataset", "diving48") == 0
  assert predict.class_names(None, str(tmp_path / "flagged"), 48) == labels.class_names("diving48")
  assert _convert(path, tmp_path / "wrong", "--dataset", "ssv2") == 1
  assert "has 174 classes but the probe has 48" in capsys.readouterr().err
  assert not (tmp_path / "wrong" / "checkpoints").exists()


def test_k400_probe_records_its_dataset_and_shows_indices(tmp_path, capsys, caplog,
                                                          monkeypatch):
  path = _reference_file(tmp_path, "k400-probe.pth.tar", 400)
  assert _convert(path, tmp_path / "probe") == 0
  assert "jepa#18" in capsys.readouterr().out
  probe = str(tmp_path / "probe")
  assert checkpoint.read_probe_config(probe)["eval"] == {"dataset": "k400"}
  with caplog.at_level(logging.INFO, logger="jepa_jax.predict"):
    assert predict.class_names(None, probe, 400) is None
  assert "jepa#18" in caplog.text
  mine = tmp_path / "k400.txt"
  mine.write_text("".join(f"k{i}\n" for i in range(400)))
  assert predict.class_names(str(mine), probe, 400)[399] == "k399"
  # the recorded dataset is what predict looks up: a K400 list shipped later reaches the probe
  shipped = [f"shipped{i}" for i in range(400)]
  monkeypatch.setattr(labels, "class_names", lambda d: shipped if d == "k400" else None)
  assert predict.class_names(None, probe, 400) == shipped


def test_probe_of_unknown_class_count_gets_indices(tmp_path, capsys):
  path = _reference_file(tmp_path, "ssv2-probe.pth.tar", 7)
  assert _convert(path, tmp_path / "probe") == 0
  assert "none saved" in capsys.readouterr().out
  probe = str(tmp_path / "probe")
  assert "eval" not in checkpoint.read_probe_config(probe)
  assert predict.class_names(None, probe, 7) is None


def test_dataset_flag_only_with_from_torch_probe(tmp_path, capsys):
  with pytest.raises(SystemExit):
    convert_cli(["--to-torch", "--ckpt", str(tmp_path), "--out", str(tmp_path / "x.pt"),
                 "--dataset", "ssv2"])
  assert "--dataset is for --from-torch --kind probe" in capsys.readouterr().err
