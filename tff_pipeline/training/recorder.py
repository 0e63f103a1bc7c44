"""What a run records: its history, the metrics CSV and TensorBoard events.

Rows are released with the `tff.program` managers, `CSVFileReleaseManager`
(keyed by `round_num`, which drops rows at or after a resumed round) and
`TensorBoardReleaseManager`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_federated as tff

from tff_pipeline.training import aio
from tff_pipeline.training import outputs as outputs_lib


class Recorder:
  """A run's history; releases each round's row to the CSV and TensorBoard.

  Args:
    paths: Where the run writes.
    start_round: The round the run resumes after (0 for a new run); the
      history starts with the CSV's rows up to it.
  """

  def __init__(self, paths: outputs_lib.OutputPaths, start_round: int):
    self.paths = paths
    self.history = outputs_lib.read_metrics_csv(paths.metrics_csv, start_round)
    self._start_round = start_round
    self._csv = tff.program.CSVFileReleaseManager(
        paths.metrics_csv,
        save_mode=tff.program.CSVSaveMode.WRITE,
        key_fieldname='round_num',
    )
    self._tensorboard = tff.program.TensorBoardReleaseManager(paths.logdir)

  def release(self, round_num: int, row: dict[str, float]) -> None:
    """Appends `row` to the history and writes it, keyed by `round_num`."""
    self.history.append({'round_num': float(round_num), **row})

    async def release_all():
      await self._csv.release(row, key=round_num)
      # TensorBoard scalars are float32; huge float64 values become inf
      # instead of failing the conversion.
      with np.errstate(over='ignore'):
        scalars = {k: np.float32(v) for k, v in row.items()}
      await self._tensorboard.release(scalars, key=round_num)

    aio.run_sync(release_all())

  @property
  def last_round(self) -> int:
    """The last round released (by this run or before it resumed)."""
    if not self.history:
      return self._start_round
    return int(self.history[-1]['round_num'])


def eval_history(history: Sequence[Mapping[str, float]]) -> dict[str, Any]:
  """summary fields `final_eval_<m>` and `eval_<m>_by_round` from history."""
  fields: dict[str, Any] = {}
  for row in history:
    for key, value in row.items():
      if key.startswith('eval/'):
        name = key[len('eval/'):]
        by_round = fields.setdefault(f'eval_{name}_by_round', {})
        by_round[str(int(row['round_num']))] = value
        fields[f'final_eval_{name}'] = value
  return fields


def simulated_time_summary(
    history: Sequence[Mapping[str, float]], elapsed_seconds: float,
    target_accuracy: float,
) -> dict[str, Any]:
  """`summary.json`'s simulated-time keys (docs/outputs.md).

  Always `simulated_seconds`; with a target (> 0), `rounds_to_target` and
  `simulated_seconds_to_target` of the first evaluation whose
  `eval/accuracy` reaches it (None if none does yet).
  """
  summary: dict[str, Any] = {'simulated_seconds': elapsed_seconds}
  if target_accuracy > 0:
    summary.update(target_accuracy=target_accuracy, rounds_to_target=None,
                   simulated_seconds_to_target=None)
    for row in history:
      if row.get('eval/accuracy', -math.inf) >= target_accuracy:
        summary['rounds_to_target'] = int(row['round_num'])
        summary['simulated_seconds_to_target'] = row.get(
            'time/elapsed_seconds')
        break
  return summary
