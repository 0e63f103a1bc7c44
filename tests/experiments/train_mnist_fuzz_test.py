"""Hostile input for `python -m experiments.train_mnist`: random flags.

Each run ends with exit 0 and a completed run, or with exactly one `error:`
line on stderr and a non-zero exit code: never a traceback, a leaked TFF
worker or a damaged earlier run. The command lines run in one long-lived
process (`helpers.run_binary_in_process`): about 5 s of imports once instead
of once per example. See tests/fuzzing.py.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import pathlib
import pickle
import shutil
import tempfile

import numpy as np
import pytest
from hypothesis import event
from hypothesis import example
from hypothesis import given
from hypothesis import strategies as st

from tests import fuzzing
from tests import helpers
from tff_pipeline import errors
from tff_pipeline.data import mnist
from tff_pipeline.data import partition


pytestmark = pytest.mark.usefixtures('pickle_marker')

MODULE = 'experiments.train_mnist'
# Small enough that a valid combination finishes in about 15 s.
BASE_FLAGS = ['--model=2nn', '--num_clients=20', '--clients_per_round=1',
              '--client_batch_size=1000', '--total_rounds=1',
              '--progress=false']
NAME = 'fuzz'
TIMEOUT = 120  # A hang fails the example.

# flag: (valid values, invalid values). Valid values keep a run short.
_FLAG_VALUES = {
    'clients_per_round': (['1', '2'], ['0', '-1', '21', '1000000', '1.5']),
    'num_clients': (['20', '100', '600'],
                    ['0', '-5', '60001', '1000000000000', '2e3']),
    'total_rounds': (['1', '2'], ['0', '-1', '99999999999999999999999']),
    'client_batch_size': (['-1', '1000', '100000'], ['0', '-2', '1e3']),
    'client_learning_rate': (['0.1', '0.05', '1e-3'],
                             ['0', '-1', 'nan', 'inf', '1e400', '1e300']),
    'partition': (partition.PARTITIONS.names(), ['stripes', 'IID', 'iid ']),
    'dirichlet_alpha': (['0.5', '10', '1e6', '0.001'],
                        ['0', '-1', 'nan', 'inf', '1e-300', '1e-9', '0.0009']),
    'shards_per_client': (['1', '2', '5'], ['0', '-3', '1000000000']),
    'quantity_skew_exponent': (['1.5', '0.5'], ['0', '-2', 'nan', '1e-9']),
    'model': (['2nn', 'cnn'], ['vgg', '2NN', '']),
    'aggregator': (['mean', 'median', 'trimmed_mean', 'compensated'],
                   ['sum', 'krum']),
    # '-0' is a valid 0, but -0.0 is not always 0 (NumPy refuses scale=-0.0).
    'trim_fraction': (['0', '-0', '0.2', '0.49'],
                      ['0.5', '-0.1', 'nan', 'inf']),
    'dp_noise_multiplier': (['0', '-0', '0.1'], ['-1', 'nan', 'inf']),
    'faulty_client_fraction': (['0', '-0', '0.5', '1'],
                               ['1.5', '-0.1', 'nan']),
    'straggler_fraction': (['0', '-0', '0.5', '1'], ['2', '-1', 'nan']),
    'seed': (['0', '7', '2147483647'],
             ['-1', '2147483648', '100000000000000000000000']),
    'experiment_name': ([NAME], ['..', '.', 'a/b', '', 'x y', '../escape']),
    'mnist_path': ([''], ['{garbage_npz}', '{empty_dir}', '{bad_idx}',
                          '{evil_pkl}', '{fifo}', '/no/such/mnist.npz',
                          '{wrong_keys_npz}']),
}


def _junk():
  """Arbitrary strings: no NUL (argv cannot hold one), no surrogates."""
  return st.text(
      st.characters(blacklist_categories=('Cs',), blacklist_characters='\0'),
      max_size=12)


@st.composite
def _flag_args(draw, min_bad: int = 0):
  """A random subset of flags, each with a valid, invalid or junk value.

  Args:
    draw: Hypothesis' draw function.
    min_bad: The first `min_bad` flags get invalid or junk values, so the
      run fails after the ~5 s of imports instead of training for ~15 s.
  """
  names = draw(st.lists(st.sampled_from(sorted(_FLAG_VALUES)), unique=True,
                        min_size=min_bad, max_size=5))
  args = []
  for position, name in enumerate(names):
    valid, invalid = _FLAG_VALUES[name]
    # Shrinks towards valid values.
    kind = draw(st.integers(6 if position < min_bad else 0, 9))
    if kind <= 5:
      value = draw(st.sampled_from(valid))
    elif kind <= 8:
      value = draw(st.sampled_from(invalid))
    else:
      value = draw(_junk())
    args.append(f'--{name}={value}')
  return args


@pytest.fixture(scope='module')
def hostile_files(tmp_path_factory):
  """Paths for --mnist_path that are not MNIST."""
  root = tmp_path_factory.mktemp('hostile')
  garbage = root / 'garbage.npz'
  garbage.write_bytes(b'PK\x03\x04' + bytes(range(256)) * 4)
  (root / 'empty_dir').mkdir()
  bad_idx = root / 'bad_idx'
  bad_idx.mkdir()
  for name in mnist.IDX_FILES.values():
    (bad_idx / name).write_bytes(b'\x00\x00\x08\x03' + b'\xff' * 12)
  evil = root / 'mnist.pkl.gz'
  with gzip.open(evil, 'wb') as f:
    f.write(pickle.dumps(fuzzing.EvilReduce(os.system, f'touch {fuzzing.MARKER}')))
  fifo = root / 'fifo.npz'
  os.mkfifo(fifo)
  wrong_keys = root / 'wrong_keys.npz'
  np.savez(wrong_keys, a=np.zeros(3))
  return {'garbage_npz': garbage, 'empty_dir': root / 'empty_dir',
          'bad_idx': bad_idx, 'evil_pkl': evil, 'fifo': fifo,
          'wrong_keys_npz': wrong_keys}


def _csv_rounds(path: pathlib.Path) -> list[str]:
  with open(path, newline='') as f:
    return [row['round_num'] for row in csv.DictReader(f)]


@pytest.fixture(scope='module')
def earlier_run(tmp_path_factory):
  """The output tree of a successful run named NAME (copy before use)."""
  root = tmp_path_factory.mktemp('earlier')
  done = helpers.run_binary_in_process(
      MODULE, f'--experiment_name={NAME}', f'--root_output_dir={root}',
      *BASE_FLAGS, timeout=TIMEOUT)
  assert done.returncode == 0, done.stderr
  results = root / 'results' / NAME
  assert json.loads((results / 'summary.json').read_text())[
      'status'] == 'completed'
  assert _csv_rounds(results / 'experiment.metrics.csv') == ['1']
  return root


def _snapshot(directory: pathlib.Path) -> dict[str, bytes]:
  """Every file under `directory`, by relative path, with its content."""
  return {str(p.relative_to(directory)): p.read_bytes()
          for p in sorted(directory.rglob('*')) if p.is_file()}


def _run_fuzzed_binary(args: list[str], reuse_earlier_run: bool,
                       hostile_files, earlier_run) -> None:
  """Runs the binary with `args`; checks the outcome is clean either way."""
  def resolve(arg):
    flag, value = arg.split('=', 1)
    if value.startswith('{') and value[1:-1] in hostile_files:
      return f'{flag}={hostile_files[value[1:-1]]}'
    return arg

  args = [resolve(a) for a in args]
  base = pathlib.Path(tempfile.mkdtemp(prefix='tff_fuzz_bin_'))
  try:
    root = base / 'out'
    if reuse_earlier_run:
      shutil.copytree(earlier_run, root)
    results = root / 'results' / NAME
    earlier = {d: _snapshot(root / d / NAME)
               for d in ('results', 'checkpoints')} if reuse_earlier_run else {}
    before = helpers.worker_binary_pids()
    run_id = base.name
    done = helpers.run_binary_in_process(
        MODULE, f'--experiment_name={NAME}', f'--root_output_dir={root}',
        *BASE_FLAGS, *args, timeout=TIMEOUT, env={'TFF_FUZZ_RUN': run_id})
    leaked = helpers.worker_pids_with_env('TFF_FUZZ_RUN', run_id) - before
    event(f'exit {done.returncode}')
    report = f'args {args}\nexit {done.returncode}\nstderr:\n{done.stderr}'
    assert not leaked, report
    assert 'Traceback' not in done.stderr, report
    name = next((a.split('=', 1)[1] for a in reversed(args)
                 if a.startswith('--experiment_name=')), NAME)
    if done.returncode == 0:
      summary = json.loads(
          (root / 'results' / name / 'summary.json').read_text())
      assert summary['status'] == 'completed', report
    else:
      assert done.returncode > 0, report  # Not killed by a signal.
      lines = done.stderr.splitlines()
      errors_lines = [l for l in lines if l.startswith('error:')]
      assert len(errors_lines) == 1, report
      # The message is one line: nothing of it spills onto later lines.
      assert lines[-1] == errors_lines[0], report
    fuzzing.assert_nothing_executed()
    if reuse_earlier_run:
      # The earlier run's outputs are intact, whatever this run did.
      summary = json.loads((results / 'summary.json').read_text())
      assert summary['rounds_completed'] >= 1, report
      if done.returncode != 0:
        assert summary['status'] == 'completed', report
      assert _csv_rounds(results / 'experiment.metrics.csv')[:1] == ['1'], (
          report)
      if done.returncode == errors.UsageError.exit_code:
        # Bad flags, data or checkpoints are refused before anything is
        # written: not one byte of the earlier run changed.
        for d, files in earlier.items():
          assert _snapshot(root / d / NAME) == files, report
  finally:
    shutil.rmtree(base, ignore_errors=True)


@fuzzing.deterministic(4)
@given(args=_flag_args(min_bad=1), reuse_earlier_run=st.booleans())
# Refused late, after the output directories exist: changed flags on resume
# (CheckpointError) and a corrupt --mnist_path (DataError).
@example(args=['--seed=5'], reuse_earlier_run=True)
@example(args=['--mnist_path={garbage_npz}'], reuse_earlier_run=True)
def test_binary_flags_fuzz(args, reuse_earlier_run, hostile_files,
                           earlier_run):
  _run_fuzzed_binary(args, reuse_earlier_run, hostile_files, earlier_run)


@pytest.mark.slow
@pytest.mark.timeout(3600)
@fuzzing.deterministic(60)
@given(args=_flag_args(), reuse_earlier_run=st.booleans())
def test_binary_flags_fuzz_many(args, reuse_earlier_run, hostile_files,
                                earlier_run):
  _run_fuzzed_binary(args, reuse_earlier_run, hostile_files, earlier_run)
