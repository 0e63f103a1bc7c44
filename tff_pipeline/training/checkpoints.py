"""Checkpoints: a `tff.program.ProgramStateManager` of `.npz` files, plus the
guards a user needs.

The program state of a round holds everything that affects later rounds: the
learning process state (model, optimizer and aggregator state) and the round
number. Client sampling, shuffling and every other random choice is a pure
function of (seed, round), so it needs no saved state of its own. Other
state that a later round depends on (the simulated clock of
`scheduling/scheduler.py`) goes next to them as `extra` entries
(`save(state, round_num, extra={'name': value})`, restored by
`restore(structure, extra_structure={'name': template})`): any nest of
arrays and scalars.

Each version is `<checkpoint_dir>/round_<N>/state.npz`, written by
`npz_state.NpzProgramStateManager` with no TensorFlow object created: TFF's
`FileProgramStateManager` (a SavedModel a save) grew the process by 0.42 MiB
a save (docs/memory.md). Versions written by earlier releases of the pipeline
with that manager (a `round_<N>` directory holding `saved_model.pb`) are
still read, through TFF's manager, so an existing run resumes; the next
saves are `.npz` and `keep_total` removes the old ones in turn.

On top of the manager this module adds:
  * fallback: if the latest checkpoint cannot be read (a crash while writing,
    a truncated disk), it is moved aside as `corrupt_<name>` with a warning
    and the previous one is used;
  * a one-line `CheckpointError` if a checkpoint holds a state of another
    structure (another model or algorithm): it is left in place;
  * a record of the run's hyperparameters (`run_config.json`), so that
    resuming with different ones is refused unless explicitly allowed.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

from absl import logging
import tensorflow_federated as tff

from tff_pipeline import errors
from tff_pipeline.training import aio
from tff_pipeline.training import npz_state
from tff_pipeline.training import outputs

PREFIX = 'round_'
RUN_CONFIG = 'run_config.json'
# A version directory written by `tff.program.FileProgramStateManager`.
SAVED_MODEL_FILE = 'saved_model.pb'
_PROCESS_STATE = 'process_state'
_ROUND_NUM = 'round_num'

# Flags that may change between a run and its resumption: they do not change
# what the rounds compute, only how long, how often we look, and where.
RESUMABLE_CHANGES = frozenset({
    'root_output_dir', 'total_rounds', 'rounds_per_eval',
    'rounds_per_checkpoint', 'allow_flag_changes', 'workers', 'progress',
    'flagfile', 'worker_connect_timeout', 'worker_tls_ca', 'worker_tls_cert',
    'worker_tls_key',
})


@dataclasses.dataclass(frozen=True)
class Restored:
  """A checkpoint read back: the process state, its round and the extras."""

  process_state: Any
  round_num: int
  extra: Mapping[str, Any]


class CheckpointManager:
  """Saves and restores program state under `checkpoint_dir`.

  Args:
    checkpoint_dir: Directory of this experiment's checkpoints.
    keep_total: How many checkpoints to keep (the newest).
  """

  def __init__(self, checkpoint_dir: str, keep_total: int = 3):
    self.checkpoint_dir = checkpoint_dir
    self._manager = npz_state.NpzProgramStateManager(
        checkpoint_dir, prefix=PREFIX, keep_total=keep_total)

  def versions(self) -> list[int]:
    return aio.run_sync(self._manager.get_versions()) or []

  def save(self, state: Any, round_num: int,
           extra: Mapping[str, Any] | None = None) -> None:
    """Saves `state` as round `round_num`'s checkpoint.

    Args:
      state: The learning process state (a nest of arrays and scalars).
      round_num: The round it is the state after.
      extra: More named entries to save beside them (nests of arrays and
        scalars); `restore` reads them back given `extra_structure`.
    """
    aio.run_sync(self._manager.save(
        _program_state(state, round_num, extra or {}), round_num))

  def load_latest(self, state_structure: Any) -> tuple[Any, int]:
    """Returns (process state, round) of the newest readable checkpoint.

    Unreadable checkpoints are moved aside with a warning. Returns
    (None, 0) when there is no usable checkpoint.

    Raises:
      errors.CheckpointError: as `restore`.
    """
    restored = self.restore(state_structure)
    return restored.process_state, restored.round_num

  def restore(self, state_structure: Any,
              extra_structure: Mapping[str, Any] | None = None) -> Restored:
    """The newest readable checkpoint, read as the given structures.

    Args:
      state_structure: A process state of the structure saved (its values
        are not used), e.g. the process's initial state.
      extra_structure: Templates of the `extra` entries that were saved.

    Returns:
      The checkpoint; `Restored(None, 0, {})` if there is none.

    Raises:
      errors.CheckpointError: if the newest checkpoint holds a state of
        another structure (it is left in place).
    """
    structure = _program_state(state_structure, 0, extra_structure or {})
    for version in sorted(self.versions(), reverse=True):
      path = self._manager.path(version)
      try:
        loaded = self._load(version, structure)
      except npz_state.StructureMismatchError as e:
        raise errors.CheckpointError(
            f'checkpoint {path} does not fit this run\'s state: {e}; use a '
            'new --experiment_name (or move the checkpoints away)') from None
      except Exception as e:  # pylint: disable=broad-except
        # Any failure to read means this checkpoint cannot be trusted.
        self._move_aside(version, e)
        continue
      extra = {k: v for k, v in loaded.items()
               if k not in (_PROCESS_STATE, _ROUND_NUM)}
      return Restored(loaded[_PROCESS_STATE], int(loaded[_ROUND_NUM]), extra)
    return Restored(None, 0, {})

  def _load(self, version: int, structure: Mapping[str, Any]) -> Any:
    path = self._manager.path(version)
    if (not os.path.exists(self._manager.state_file(version))
        and os.path.exists(os.path.join(path, SAVED_MODEL_FILE))):
      # Written by an earlier release with TFF's SavedModel manager.
      legacy = tff.program.FileProgramStateManager(
          self.checkpoint_dir, prefix=PREFIX, keep_total=0,
          keep_first=False)
      return aio.run_sync(legacy.load(version, structure))
    return aio.run_sync(self._manager.load(version, structure))

  def _move_aside(self, version: int, error: Exception) -> None:
    path = self._manager.path(version)
    aside = os.path.join(self.checkpoint_dir, f'corrupt_{PREFIX}{version}')
    logging.warning('checkpoint %s is unreadable (%s); moved to %s',
                    path, error, aside)
    print(f'warning: checkpoint {path} is unreadable '
          f'({type(error).__name__}); falling back to an earlier one')
    if os.path.exists(aside):
      aside += f'.{os.getpid()}'
    os.replace(path, aside)

  def check_run_config(
      self, hparams: Mapping[str, Any], allow_changes: bool
  ) -> None:
    """Records `hparams`, or compares them with the recorded ones.

    Raises:
      errors.CheckpointError: if checkpoints exist and a flag that changes
        the computation differs, unless `allow_changes`.
    """
    path = os.path.join(self.checkpoint_dir, RUN_CONFIG)
    current = json.loads(json.dumps(dict(hparams), default=str))
    if os.path.exists(path) and self.versions():
      with open(path) as f:
        recorded = json.load(f)
      changed = sorted(
          k for k in set(recorded) | set(current)
          if k not in RESUMABLE_CHANGES and recorded.get(k) != current.get(k)
      )
      if changed and not allow_changes:
        details = ', '.join(
            f'--{k}={recorded.get(k)!r} -> {current.get(k)!r}'
            for k in changed[:4]
        )
        raise errors.CheckpointError(
            f'{self.checkpoint_dir} holds checkpoints of a run with other '
            f'flags ({details}); pass --allow_flag_changes to resume anyway, '
            'or use a new --experiment_name'
        )
    outputs.atomic_write_json(path, current)


def _program_state(state: Any, round_num: int,
                   extra: Mapping[str, Any]) -> dict[str, Any]:
  clash = {_PROCESS_STATE, _ROUND_NUM} & set(extra)
  if clash:
    raise ValueError(f'extra checkpoint entries may not be named {clash}')
  return {_PROCESS_STATE: state, _ROUND_NUM: round_num, **extra}
