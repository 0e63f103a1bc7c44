"""Checkpoints: `.npz` program state, bitwise round trips of a real process
state, structure checks, fallback from damaged files, TFF's old SavedModel
format and `keep_total`."""

import asyncio
import collections
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from tff_pipeline import config as config_lib
from tff_pipeline import errors
from tff_pipeline.data import regression
from tff_pipeline.training import checkpoints
from tff_pipeline.training import loop
from tff_pipeline.training import npz_state

SPEC = regression.RegressionSpec(num_clients=4, examples_per_client=10,
                                 noise_std=0.3, size_exponent=1.0, seed=5)


def _config(tmp_path):
  # Adam on the server: its state (step count, moments) is in the checkpoint.
  return config_lib.TrainingConfig(
      experiment_name='exp', root_output_dir=str(tmp_path), total_rounds=2,
      clients_per_round=4, client_batch_size=-1,
      client_optimizer=config_lib.OptimizerConfig(learning_rate=0.2),
      server_optimizer=config_lib.OptimizerConfig(
          name='adam', learning_rate=0.01, role='server'),
      seed=1)


@pytest.fixture(scope='module')
def trained(task, tmp_path_factory, tff_runtime):
  """(algorithm, config, initial state, the state after round 1)."""
  del tff_runtime
  config = _config(tmp_path_factory.mktemp('run'))
  algorithm = loop.build_algorithm(task, config)
  initial = algorithm.process.initialize()
  after_one = loop.run_round(task, config, algorithm, initial, 1).state
  return algorithm, config, initial, after_one


def _assert_bitwise_equal(got, want):
  got_leaves = tf.nest.flatten(got)
  want_leaves = tf.nest.flatten(want)
  assert len(got_leaves) == len(want_leaves) > 0
  for g, w in zip(got_leaves, want_leaves):
    g, w = np.asarray(g), np.asarray(w)
    assert g.dtype == w.dtype and g.shape == w.shape
    assert g.tobytes() == w.tobytes()


def test_a_real_process_state_comes_back_bitwise(trained, task, tmp_path):
  algorithm, config, initial, state = trained
  manager = checkpoints.CheckpointManager(str(tmp_path))
  manager.save(state, 1)
  assert os.listdir(tmp_path) == ['round_1']
  assert os.listdir(tmp_path / 'round_1') == ['state.npz']
  restored, round_num = manager.load_latest(initial)
  assert round_num == 1
  assert type(restored) is type(state)  # pylint: disable=unidiomatic-typecheck
  assert tf.nest.map_structure(lambda _: 0, restored) == (
      tf.nest.map_structure(lambda _: 0, state))
  _assert_bitwise_equal(restored, state)
  # The next round from the restored state is the next round from the saved.
  _assert_bitwise_equal(
      loop.run_round(task, config, algorithm, restored, 2).state,
      loop.run_round(task, config, algorithm, state, 2).state)


def test_extra_entries_round_trip(trained, tmp_path):
  _, _, initial, state = trained
  manager = checkpoints.CheckpointManager(str(tmp_path))
  extra = {'scheduler': collections.OrderedDict(
      clock=np.float64(12.5), busy=np.array([3, 0, 7], np.int64),
      order=[np.int32(2), np.int32(0)], name=np.str_('fifo'))}
  manager.save(state, 4, extra=extra)
  template = {'scheduler': collections.OrderedDict(
      clock=0.0, busy=np.zeros(3, np.int64), order=[0, 0], name='')}
  restored = manager.restore(initial, extra_structure=template)
  assert restored.round_num == 4
  _assert_bitwise_equal(restored.process_state, state)
  _assert_bitwise_equal(restored.extra, extra)
  assert list(restored.extra['scheduler']) == ['clock', 'busy', 'order',
                                               'name']
  with pytest.raises(ValueError, match='round_num'):
    manager.save(state, 5, extra={'round_num': 1})


def test_another_structure_is_a_one_line_error_and_stays(trained, tmp_path):
  _, _, initial, state = trained
  manager = checkpoints.CheckpointManager(str(tmp_path))
  manager.save(state, 2)
  other_shape = tf.nest.map_structure(np.asarray, initial)
  other_shape.global_model_weights.trainable[0] = np.zeros((9, 1), np.float32)
  with pytest.raises(errors.CheckpointError) as raised:
    manager.load_latest(other_shape)
  message = str(raised.value)
  assert '\n' not in message
  assert 'round_2' in message and "global_model_weights/trainable/0" in message
  assert '--experiment_name' in message
  with pytest.raises(errors.CheckpointError, match=r'missing.*scheduler'):
    manager.restore(initial, extra_structure={'scheduler': 0.0})
  assert manager.versions() == [2]  # Not moved aside: it is not damaged.


@pytest.mark.parametrize('damage', ['truncate', 'flip', 'empty_dir'])
def test_a_damaged_checkpoint_falls_back_to_the_previous(
    trained, tmp_path, capsys, damage):
  _, _, initial, state = trained
  manager = checkpoints.CheckpointManager(str(tmp_path))
  manager.save(initial, 1)
  manager.save(state, 2)
  path = tmp_path / 'round_2' / 'state.npz'
  data = path.read_bytes()
  if damage == 'truncate':
    path.write_bytes(data[:len(data) // 2])
  elif damage == 'flip':
    # One flipped bit: zip's CRC-32 (or its headers) catch it.
    position = data.index(b'leaf_') + 200
    path.write_bytes(data[:position] + bytes([data[position] ^ 0x40])
                     + data[position + 1:])
  else:
    path.unlink()
  restored, round_num = manager.load_latest(initial)
  assert round_num == 1
  _assert_bitwise_equal(restored, initial)
  assert 'round_2 is unreadable' in capsys.readouterr().out
  assert sorted(os.listdir(tmp_path)) == ['corrupt_round_2', 'round_1']


def test_every_damaged_checkpoint_gives_a_fresh_start(trained, tmp_path):
  _, _, initial, _ = trained
  manager = checkpoints.CheckpointManager(str(tmp_path))
  manager.save(initial, 3)
  (tmp_path / 'round_3' / 'state.npz').write_bytes(b'PK\x03\x04 torn')
  assert manager.load_latest(initial) == (None, 0)
  assert manager.versions() == []


def _save_in_the_old_format(directory, state, round_num):
  """What earlier releases wrote: TFF's SavedModel program state manager."""
  old = tff.program.FileProgramStateManager(
      str(directory), prefix=checkpoints.PREFIX, keep_total=3,
      keep_first=False)
  asyncio.run(old.save({'process_state': state, 'round_num': round_num},
                       round_num))


def test_a_run_of_the_old_savedmodel_format_resumes(trained, tmp_path):
  _, _, initial, state = trained
  _save_in_the_old_format(tmp_path, initial, 1)
  _save_in_the_old_format(tmp_path, state, 2)
  assert (tmp_path / 'round_2' / 'saved_model.pb').exists()
  manager = checkpoints.CheckpointManager(str(tmp_path))
  restored, round_num = manager.load_latest(initial)
  assert round_num == 2
  _assert_bitwise_equal(restored, state)
  # New saves are .npz; keep_total removes the old directories in turn.
  for version in (3, 4):
    manager.save(state, version)
  assert manager.versions() == [2, 3, 4]
  manager.save(state, 5)
  assert sorted(os.listdir(tmp_path)) == ['round_3', 'round_4', 'round_5']
  assert os.listdir(tmp_path / 'round_5') == ['state.npz']


def test_a_damaged_old_format_checkpoint_falls_back(trained, tmp_path):
  _, _, initial, state = trained
  _save_in_the_old_format(tmp_path, initial, 1)
  _save_in_the_old_format(tmp_path, state, 2)
  for name in os.listdir(tmp_path / 'round_2' / 'variables'):
    (tmp_path / 'round_2' / 'variables' / name).write_bytes(b'')
  restored, round_num = checkpoints.CheckpointManager(
      str(tmp_path)).load_latest(initial)
  assert round_num == 1
  _assert_bitwise_equal(restored, initial)
  assert (tmp_path / 'corrupt_round_2' / 'saved_model.pb').exists()


def test_keep_total_keeps_the_newest(tmp_path):
  manager = checkpoints.CheckpointManager(str(tmp_path), keep_total=2)
  for version in (1, 2, 5, 7):
    manager.save({'w': np.full(3, version, np.float32)}, version)
  assert manager.versions() == [5, 7]
  restored, round_num = manager.load_latest({'w': np.zeros(3, np.float32)})
  assert round_num == 7
  np.testing.assert_array_equal(restored['w'], np.full(3, 7, np.float32))


def test_the_manager_keeps_tffs_contract(tmp_path):
  manager = npz_state.NpzProgramStateManager(str(tmp_path), prefix='v_',
                                             keep_total=0)
  assert asyncio.run(manager.get_versions()) is None
  for version in range(1, 5):
    asyncio.run(manager.save([np.int64(version)], version))
  assert asyncio.run(manager.get_versions()) == [1, 2, 3, 4]  # Keeps all.
  assert asyncio.run(manager.load_latest([0])) == ([4], 4)
  with pytest.raises(tff.program.ProgramStateExistsError):
    asyncio.run(manager.save([np.int64(0)], 4))
  with pytest.raises(tff.program.ProgramStateNotFoundError):
    asyncio.run(manager.load(9, [0]))
  asyncio.run(manager.remove(2))
  asyncio.run(manager.remove(2))  # Already gone: not an error.
  assert asyncio.run(manager.get_versions()) == [1, 3, 4]


def test_a_crash_during_a_save_leaves_no_version(tmp_path, monkeypatch):
  manager = npz_state.NpzProgramStateManager(str(tmp_path), prefix='round_')
  asyncio.run(manager.save({'a': np.ones(2)}, 1))

  def crash(*args):
    raise OSError('disk full')

  monkeypatch.setattr(os, 'rename', crash)
  with pytest.raises(OSError, match='disk full'):
    asyncio.run(manager.save({'a': np.ones(2)}, 2))
  monkeypatch.undo()
  assert sorted(os.listdir(tmp_path)) == ['round_1']
  # A temporary directory a killed process left behind is removed.
  os.mkdir(tmp_path / '.round_3.abc')
  npz_state.NpzProgramStateManager(str(tmp_path), prefix='round_')
  assert sorted(os.listdir(tmp_path)) == ['round_1']


def test_saving_creates_no_tensorflow_objects(trained, tmp_path,
                                              monkeypatch):
  _, _, _, state = trained

  def forbidden(*args, **kwargs):
    raise AssertionError('a checkpoint save used TensorFlow')

  monkeypatch.setattr(tf, 'Variable', forbidden)
  monkeypatch.setattr(tf.saved_model, 'save', forbidden)
  monkeypatch.setattr(tf, 'function', forbidden)
  checkpoints.CheckpointManager(str(tmp_path)).save(state, 1)
  assert (tmp_path / 'round_1' / 'state.npz').exists()


def test_leaves_that_are_not_arrays_are_refused(tmp_path):
  manager = checkpoints.CheckpointManager(str(tmp_path))
  with pytest.raises(TypeError, match=r"'process_state/hook' \(object\) is not an array"):
    manager.save({'hook': object()}, 1)
  assert manager.versions() == []

