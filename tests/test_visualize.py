"""python -m jepa_jax.visualize: the colours are the tokens' projection on a principal-component
basis fitted on the --fit clips and reused exactly from --basis, and the attention is the saved
probe's cross-attention over the clip's tokens."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jepa_jax import checkpoint as ckpt_lib
from jepa_jax.extract import __main__ as extract_cli
from jepa_jax import visualize
from jepa_jax.eval import probe as probe_lib
from test_extract import tiny  # noqa: F401 -- the shared tiny encoder and videos

CLIP = ["--frames", "4", "--frame-step", "2", "--resolution", "32"]


@pytest.fixture(scope="module")
def extracted(tiny, tmp_path_factory):  # noqa: F811
  """The extract command's tokens of the videos' centred clips, ``[videos, N, D]``."""
  ckpt, _, videos = tiny
  out = tmp_path_factory.mktemp("extracted")
  assert extract_cli.main(["--checkpoint", ckpt, "--out", str(out), *CLIP, *videos]) == 0
  index = [json.loads(line) for line in open(out / "index.jsonl")]
  return np.stack([np.load(out / r["file"])[0] for r in index])


def files(directory):
  return {n: open(os.path.join(directory, n), "rb").read() for n in sorted(os.listdir(directory))}


def test_colours_project_tokens_on_the_basis_reused_exactly(tiny, extracted,  # noqa: F811
                                                             tmp_path):
  ckpt, _, videos = tiny
  basis_file = str(tmp_path / "basis.npz")
  run = ["--checkpoint", ckpt, *CLIP, "--zoom", "2"]
  assert visualize.main(run + ["--out", str(tmp_path / "a"), "--fit", videos[0], "--fit", videos[2],
                               "--basis", basis_file, videos[1]]) == 0
  assert visualize.main(run + ["--out", str(tmp_path / "b"), "--basis", basis_file,
                               videos[1]]) == 0
  a = files(tmp_path / "a")
  assert sorted(a) == ["0000000_v9.gif", "0000000_v9.npz", "0000000_v9.png"]
  assert a == files(tmp_path / "b")  # the saved basis gives the very same pictures

  fit = extracted[[0, 2]].reshape(-1, 32)
  basis = visualize.load_basis(basis_file, 32)
  np.testing.assert_allclose(basis.components @ basis.components.T, np.eye(3), atol=1e-9)
  eigval, eigvec = np.linalg.eigh(np.cov(fit.astype(np.float64), rowvar=False))
  top = eigvec[:, np.argsort(eigval)[::-1][:3]].T
  np.testing.assert_allclose(np.abs(np.sum(top * basis.components, axis=1)), 1.0, atol=1e-6)

  shown = extracted[1]
  arrays = np.load(tmp_path / "a" / "0000000_v9.npz")
  pca = arrays["pca"]
  assert pca.shape == (2, 2, 2, 3) and pca.min() >= 0 and pca.max() <= 1
  np.testing.assert_allclose(pca.reshape(-1, 3), visualize.colours(basis, shown), atol=1e-6)
  # The picture: row 0 the frames, row 1 each frame's tubelet's colours, a token a 16 px square
  # (32 px zoomed), 2 px (4 zoomed) between pictures.
  png = np.asarray(Image.open(tmp_path / "a" / "0000000_v9.png"))
  assert png.shape == (2 * 64 + 4, 4 * 64 + 3 * 4, 3)
  np.testing.assert_array_equal(png[:64:2, :64:2], arrays["frames"][0])
  for frame in range(4):
    colour_row = png[68:, frame * 68:frame * 68 + 64]
    want = np.round(pca[frame // 2] * 255).astype(np.uint8)
    np.testing.assert_array_equal(colour_row[::32, ::32], want)
  gif = Image.open(tmp_path / "a" / "0000000_v9.gif")
  assert gif.n_frames == 4 and gif.size == (2 * 64 + 4, 64)

  # Fitted on the shown clip itself, the colours would differ: the basis decides them.
  assert not np.allclose(visualize.colours(visualize.fit_basis(shown), shown), pca.reshape(-1, 3))
  # A basis of other tokens is refused: other widths, another block's.
  np.savez(tmp_path / "narrow.npz", mean=np.zeros(16), components=np.zeros((3, 16)),
           lo=np.zeros(3), hi=np.ones(3))
  with pytest.raises(ValueError, match="16-wide tokens"):
    visualize.load_basis(str(tmp_path / "narrow.npz"), 32)
  with pytest.raises(ValueError, match="fitted on the output's tokens, not block 0's"):
    visualize.load_basis(basis_file, 32, layer=0)
  assert visualize.main(run + ["--out", str(tmp_path / "e"), "--layer", "0", "--basis",
                               basis_file, videos[1]]) == 1


def test_attention_is_the_probes_cross_attention(tiny, extracted, tmp_path):  # noqa: F811
  ckpt, _, videos = tiny
  saved = dict(num_classes=3, num_heads=2, mlp_ratio=4.0, depth=1, num_queries=1, embed_dim=32,
               blocks_on="query")
  probe = probe_lib.probe_from_config(saved)
  params = jax.device_get(probe_lib.init_probe_params(probe, 32, 1))
  ckpt_lib.save_probe(tmp_path / "probe", params, saved)
  assert visualize.main(["--checkpoint", ckpt, *CLIP, "--out", str(tmp_path / "o"), "--probe",
                         str(tmp_path / "probe"), videos[2]]) == 0
  arrays = np.load(tmp_path / "o" / "0000000_v34.npz")
  attention = arrays["attention"]
  assert attention.shape == (2, 2, 2)
  # The weights from the probe's parameters: softmax over tokens of q . k / sqrt(head dim), with
  # q from the query token and k from the LayerNorm'd tokens, averaged over the 2 heads.
  tokens = extracted[2]
  x = params["xattn"]
  mean, var = tokens.mean(-1, keepdims=True), tokens.var(-1, keepdims=True)
  normed = (tokens - mean) / np.sqrt(var + 1e-5) * params["norm1"]["scale"] + params["norm1"][
      "bias"]
  q = params["query_tokens"][0, 0] @ x["q"]["kernel"] + x["q"]["bias"]
  k = (normed @ x["kv"]["kernel"] + x["kv"]["bias"])[:, :32]
  logits = np.einsum("hd,nhd->hn", q.reshape(2, 16), k.reshape(-1, 2, 16)) / 4.0
  weights = np.asarray(jax.nn.softmax(jnp.asarray(logits), axis=-1)).mean(0)
  np.testing.assert_allclose(attention.reshape(-1), weights, atol=1e-5)
  png = np.asarray(Image.open(tmp_path / "o" / "0000000_v34.png"))
  assert png.shape == (3 * 32 + 4, 4 * 32 + 6, 3)  # frames, colours, attention
  # An eval workdir holding one probe names it; holding two, it is refused naming them.
  (tmp_path / "eval" / "probes").mkdir(parents=True)
  os.symlink(tmp_path / "probe", tmp_path / "eval" / "probes" / "frac1_seed0")
  assert visualize.probe_dir(str(tmp_path / "eval")) == str(tmp_path / "eval" / "probes" /
                                                           "frac1_seed0")
  assert visualize.probe_dir(str(tmp_path / "probe")) == str(tmp_path / "probe")
  os.symlink(tmp_path / "probe", tmp_path / "eval" / "probes" / "frac1_seed1")
  with pytest.raises(ValueError, match="holds 2 probes"):
    visualize.probe_dir(str(tmp_path / "eval"))
