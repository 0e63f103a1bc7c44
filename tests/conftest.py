"""Shared fixtures: one TFF runtime per test session, leak checks, the
regression task of a module's `SPEC`, and the fuzz tests' pickle marker."""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

# pylint: disable=g-import-not-at-top,wrong-import-position
from tff_pipeline import tf_noise

# TF's three cuDNN/cuFFT/cuBLAS lines, printed by each `make test` process
# (pytest-xdist's workers write them to the terminal), as the binaries do.
tf_noise.install()

import pytest

from tests import fuzzing
from tff_pipeline import runtime as runtime_lib
from tff_pipeline import tasks
from tff_pipeline.data import mnist as mnist_lib
from tff_pipeline.data import regression


@pytest.fixture(scope='session')
def tff_runtime():
  """A local TFF worker owned by the test session, installed as default.

  Stopped at the end of the session; the session fails if any worker this
  process started is still alive then.
  """
  runtime = runtime_lib.use_local_runtime()
  yield runtime
  runtime_lib.shutdown_default_runtime()
  assert runtime_lib.live_worker_pids() == []


@pytest.fixture(scope='session')
def mnist_arrays():
  return mnist_lib.load_mnist()


@pytest.fixture(scope='module')
def shards(request):
  """Regression shards of the test module's `SPEC` (a `RegressionSpec`)."""
  return regression.make_regression_shards(request.module.SPEC)


@pytest.fixture(scope='module')
def task(shards):  # pylint: disable=redefined-outer-name
  """The regression task on `shards`."""
  return tasks.build_regression_task(shards)


@pytest.fixture(scope='module')
def pickle_marker():
  """Fails the module if any pickle ran a global (see `fuzzing.MARKER`)."""
  if os.path.exists(fuzzing.MARKER):
    os.remove(fuzzing.MARKER)
  yield
  executed = os.path.exists(fuzzing.MARKER)
  if executed:
    os.remove(fuzzing.MARKER)
  assert not executed, 'a pickle executed a forbidden global'


# The modules that take longest in `make test`, longest first (measured with
# `--durations=0`, 2026-12-03). pytest-xdist's `--dist loadfile` hands out
# whole modules in collection order (`--no-loadscope-reorder`); starting with
# the long ones lets the workers finish together instead of one of them
# running a long module alone at the end. Only the order changes.
_LONGEST_FIRST = (
    'tests/experiments/train_mnist_combinations_test.py',
    'tests/runtime/remote_test.py',
    'tests/experiments/train_mnist_test.py',
    'tests/lessons_test.py',
    'tests/notebooks_test.py',
    'tests/experiments/train_mnist_heterofl_test.py',
    'tests/runtime/tls_test.py',
    'tests/runtime/bind_shim_test.py',
    'tests/aggregators/aggregators_test.py',
    'tests/experiments/train_regression_test.py',
    'tests/faults_test.py',
    'tests/algorithms/algorithms_test.py',
    'tests/aggregators/compensation_test.py',
    'tests/notebook_client_test.py',
    'tests/experiments/train_mnist_time_test.py',
)


def pytest_collection_modifyitems(items):
  """Moves the longest modules to the front, keeping every other order."""
  rank = {path: i for i, path in enumerate(_LONGEST_FIRST)}
  # A renamed module would silently lose its place; say so instead.
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  stale = [p for p in _LONGEST_FIRST
           if not os.path.exists(os.path.join(root, p))]
  assert not stale, f'tests/conftest.py _LONGEST_FIRST names missing {stale}'
  items.sort(key=lambda item: rank.get(item.nodeid.split('::')[0],
                                       len(rank)))
