"""Test setup shared by every test module.

Eight simulated CPU devices are made before JAX is imported, so sharding tests can build 1-, 8- and
2x4-device meshes in-process; single-device tests are unaffected (arrays default to device 0).
"""
import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def golden():
  """The reference PyTorch run of a tiny V-JEPA (see tests/fixtures/README.md)."""
  with np.load(FIXTURES / "vjepa_tiny_v1.npz") as f:
    return {k: f[k] for k in f.files}


@pytest.fixture(scope="session")
def golden_v2():
  """The V-JEPA 2 reference run of a tiny 3D-RoPE model (see tests/fixtures/README.md)."""
  with np.load(FIXTURES / "vjepa2_rope_tiny_v1.npz") as f:
    return {k: f[k] for k in f.files}


@pytest.fixture(scope="session")
def num_devices():
  return jax.device_count()


def pytest_xdist_auto_num_workers(config):
  """``-n auto``: one worker more than there are cores, as far as memory allows (~6 GiB each at
  the suite's peak). A worker spends much of its time in single-threaded compiles, imports and
  waits on subprocesses, so with one worker per core the CPUs sat 12% idle (CI, 2 cores)."""
  del config
  workers = (os.cpu_count() or 1) + 1
  try:
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
  except (AttributeError, ValueError, OSError):  # no sysconf (Windows): cores only
    return workers
  return max(1, min(workers, int(memory_gib // 6)))


def pytest_collection_modifyitems(config, items):
  """The longest test first: pytest-xdist hands tests out in collection order, so the README run
  from a fresh clone (~9 of CI's ~28 minutes), collected mid-suite, ran last on one worker while
  the other sat idle. Only it moves: moving other tests would split their modules' fixtures."""
  del config
  first = "tests/test_newcomer.py::test_readme_commands_from_a_fresh_clone"
  items[:] = sorted(items, key=lambda item: not item.nodeid.startswith(first))  # stable
