"""Checkpoints: TFF's `FileProgramStateManager`, plus the guards a user needs.

The program state of a round holds everything that affects later rounds: the
learning process state (model, optimizer and aggregator state) and the round
number, and `extra` program state beside it (the simulated clock of
`scheduling/scheduler.py`). Client sampling, shuffling and every other
random choice is a pure function of (seed, round), so it needs no saved
state of its own.

On top of TFF's manager this module adds:
  * fallback: if the latest checkpoint cannot be read (a crash while writing,
    a truncated disk), it is moved aside as `corrupt_<name>` with a warning
    and the previous one is used;
  * a record of the run's hyperparameters (`run_config.json`), so that
    resuming with different ones is refused unless explicitly allowed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from absl import logging
import tensorflow_federated as tff

from tff_pipeline import errors
from tff_pipeline.training import aio
from tff_pipeline.training import outputs

PREFIX = 'round_'
RUN_CONFIG = 'run_config.json'

# Flags that may change between a run and its resumption: they do not change
# what the rounds compute, only how long, how often we look, and where.
RESUMABLE_CHANGES = frozenset({
    'root_output_dir', 'total_rounds', 'rounds_per_eval',
    'rounds_per_checkpoint', 'allow_flag_changes', 'workers', 'progress',
    'flagfile', 'worker_connect_timeout', 'worker_tls_ca', 'worker_tls_cert',
    'worker_tls_key',
})


class CheckpointManager:
  """Saves and restores program state under `checkpoint_dir`.

  Args:
    checkpoint_dir: Directory of this experiment's checkpoints.
    keep_total: How many checkpoints to keep (the first is kept as well).
  """

  def __init__(self, checkpoint_dir: str, keep_total: int = 3):
    self.checkpoint_dir = checkpoint_dir
    self._manager = tff.program.FileProgramStateManager(
        checkpoint_dir, prefix=PREFIX, keep_total=keep_total, keep_first=False
    )

  def versions(self) -> list[int]:
    return aio.run_sync(self._manager.get_versions()) or []

  def save(self, state: Any, round_num: int,
           extra: Mapping[str, Any] | None = None) -> None:
    """Saves the process state of `round_num`, and `extra` program state
    (the simulated clock: NumPy values) next to it."""
    aio.run_sync(self._manager.save(
        {'process_state': state, 'round_num': round_num,
         'extra': dict(extra or {})}, round_num
    ))

  def load_latest(self, state_structure: Any) -> tuple[Any, int]:
    """Returns (process state, round) of the newest readable checkpoint.

    Unreadable checkpoints are moved aside with a warning. Returns
    (None, 0) when there is no usable checkpoint.
    """
    state, round_num, _ = self.load_latest_with_extra(state_structure, {})
    return state, round_num

  def load_latest_with_extra(
      self, state_structure: Any, extra_structure: Mapping[str, Any]
  ) -> tuple[Any, int, dict[str, Any] | None]:
    """As `load_latest`, plus the `extra` saved with it (None if none)."""
    structure = {'process_state': state_structure, 'round_num': 0,
                 'extra': dict(extra_structure)}
    for version in sorted(self.versions(), reverse=True):
      try:
        loaded = aio.run_sync(self._manager.load(version, structure))
        return (loaded['process_state'], int(loaded['round_num']),
                dict(loaded['extra']))
      except Exception as e:  # pylint: disable=broad-except
        # Any failure to read means this checkpoint cannot be trusted.
        path = os.path.join(self.checkpoint_dir, f'{PREFIX}{version}')
        aside = os.path.join(self.checkpoint_dir, f'corrupt_{PREFIX}{version}')
        logging.warning('checkpoint %s is unreadable (%s); moved to %s',
                        path, e, aside)
        print(f'warning: checkpoint {path} is unreadable '
              f'({type(e).__name__}); falling back to an earlier one')
        if os.path.exists(aside):
          aside += f'.{os.getpid()}'
        os.replace(path, aside)
    return None, 0, None

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
