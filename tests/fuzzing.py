"""What the fuzz tests share: deterministic settings, hostile pickles, and
strategies for numbers that are often valid and sometimes anything.

Bad input must be answered in the library by a `errors.PipelineError`
subclass that names the flag or file, and in the binaries by exactly one
`error:` line on stderr and a non-zero exit: never a traceback, a hang, a
leaked TFF worker or a damaged output directory. The fuzz tests mirror the
package: `tests/data/*_fuzz_test.py` (loaders, partitions, synthetic data),
`tests/config_fuzz_test.py` and `tests/experiments/train_mnist_fuzz_test.py`
(the binary's flags).

Hypothesis is derandomized and keeps no example database, so every run (and
CI) tries the same examples.
"""

from __future__ import annotations

import math
import os
import pathlib
import shutil
import subprocess
import tempfile

import numpy as np
from hypothesis import HealthCheck
from hypothesis import settings
from hypothesis import strategies as st


def deterministic(max_examples: int) -> settings:
  """Deterministic settings: the same examples on every run, no database."""
  return settings(
      max_examples=max_examples,
      derandomize=True,
      database=None,
      deadline=None,
      print_blob=False,
      suppress_health_check=[
          HealthCheck.too_slow,
          HealthCheck.data_too_large,
          HealthCheck.large_base_example,
      ],
  )


# A command that, if a pickle ever ran it, would create this file. The
# `pickle_marker` fixture (conftest.py) checks it around each fuzz module.
MARKER = os.path.join(tempfile.gettempdir(),
                      f'tff_fuzz_pickle_marker_{os.getpid()}')


def assert_nothing_executed() -> None:
  assert not os.path.exists(MARKER), 'a pickle executed a forbidden global'


class EvilReduce:
  """Pickles as a call of `function(*args)`."""

  def __init__(self, function, *args):
    self.function = function
    self.args = args

  def __reduce__(self):
    return self.function, self.args


def evil_objects():
  """Objects whose unpickling would create `MARKER`."""
  return [
      EvilReduce(os.system, f'touch {MARKER}'),
      EvilReduce(subprocess.call, ['touch', MARKER]),
      EvilReduce(open, MARKER, 'w'),
      EvilReduce(exec, f'open({MARKER!r}, "w").close()'),
      EvilReduce(eval, f'open({MARKER!r}, "w")'),
      EvilReduce(pathlib.Path.touch, pathlib.Path(MARKER)),
      EvilReduce(np.save, MARKER, np.zeros(1)),
      EvilReduce(shutil.copy, os.devnull, MARKER),
  ]


ANY_FLOAT = st.one_of(
    st.floats(),
    st.floats(0, 2),
    st.sampled_from([0.0, -0.0, 1e-320, 1e-300, 1e-12, 1e-4, 1e-3, 0.01, 0.5,
                     1.0, 7.0, 1e3, 1e12, 1e300, math.inf, -math.inf,
                     math.nan]),
)
ANY_INT = st.one_of(
    st.integers(-5, 60),
    st.sampled_from([-2**63, -1, 0, 1, 2**31 - 1, 2**31, 2**63, 10**30]),
)


def mostly(usual, unusual):
  """Draws from `usual` three times in four, else from `unusual`.

  Each input is then often valid on its own, so that random combinations
  still reach the checks (and the code) behind the first bad value.
  """
  return st.integers(0, 3).flatmap(lambda i: usual if i else unusual)
