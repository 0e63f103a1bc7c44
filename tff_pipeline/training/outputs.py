"""The output layout of a run, and writers that never leave a torn file.

For `R = <root_output_dir>/results/<experiment_name>`:

  R/experiment.metrics.csv   one row per round, keyed by `round_num`
  R/hparams.csv              the run's flags, one column per flag
  R/summary.json             final metrics, timings and run facts
  R/final_weights.npz        the final global model (arr_0, arr_1, ... in the
                             Keras model's order of trainable variables)
  R/*.png                    plots
  R/worker.log               output of the local TFF worker process
  <root_output_dir>/checkpoints/<experiment_name>   program state
  <root_output_dir>/logdir/<experiment_name>        TensorBoard events

Every file here is written to a temporary file in the same directory and
renamed over the old one, so a crash leaves either the old or the new version.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tff_pipeline import errors


@dataclasses.dataclass(frozen=True)
class OutputPaths:
  """Where one experiment writes.

  `OutputPaths(root_output_dir, experiment_name)` only names the paths;
  `create()` makes the directories (the training loop calls it through
  `loop.prepare_outputs`).
  """

  root_output_dir: str
  experiment_name: str

  @property
  def results_dir(self) -> str:
    return os.path.join(self.root_output_dir, 'results', self.experiment_name)

  @property
  def checkpoint_dir(self) -> str:
    return os.path.join(self.root_output_dir, 'checkpoints',
                        self.experiment_name)

  @property
  def logdir(self) -> str:
    return os.path.join(self.root_output_dir, 'logdir', self.experiment_name)

  def result(self, name: str) -> str:
    return os.path.join(self.results_dir, name)

  @property
  def metrics_csv(self) -> str:
    return self.result('experiment.metrics.csv')

  @property
  def hparams_csv(self) -> str:
    return self.result('hparams.csv')

  @property
  def summary_json(self) -> str:
    return self.result('summary.json')

  @property
  def weights_npz(self) -> str:
    return self.result('final_weights.npz')

  @property
  def worker_log(self) -> str:
    return self.result('worker.log')

  def create(self) -> 'OutputPaths':
    """Creates the directories and checks that they are writable.

    Raises:
      errors.OutputError: naming the directory that cannot be written.
    """
    for directory in (self.results_dir, self.checkpoint_dir, self.logdir):
      try:
        os.makedirs(directory, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix='.probe'):
          pass
      except OSError as e:
        raise errors.OutputError(
            f'--root_output_dir={self.root_output_dir}: cannot write to '
            f'{directory} ({e.strerror or e})'
        ) from None
    return self


def atomic_write_bytes(path: str, data: bytes) -> None:
  """Writes `data` to `path` via a temporary file and a rename."""
  directory = os.path.dirname(os.path.abspath(path))
  fd, temp = tempfile.mkstemp(dir=directory, prefix='.' + os.path.basename(path))
  try:
    with os.fdopen(fd, 'wb') as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(temp, path)
  except BaseException:
    if os.path.exists(temp):
      os.unlink(temp)
    raise


def atomic_write_text(path: str, text: str) -> None:
  atomic_write_bytes(path, text.encode('utf-8'))


def _json_safe(value: Any) -> Any:
  """NumPy scalars/arrays to Python; non-finite floats to None (valid JSON)."""
  if isinstance(value, Mapping):
    return {str(k): _json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_safe(v) for v in value]
  if isinstance(value, np.ndarray):
    return _json_safe(value.tolist())
  if isinstance(value, np.generic):
    return _json_safe(value.item())
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def atomic_write_json(path: str, value: Mapping[str, Any]) -> None:
  atomic_write_text(
      path, json.dumps(_json_safe(value), indent=2) + '\n'
  )


def atomic_save_npz(path: str, arrays: Sequence[np.ndarray]) -> None:
  """Saves arrays as arr_0, arr_1, ... in order."""
  buffer = io.BytesIO()
  np.savez(buffer, *arrays)
  atomic_write_bytes(path, buffer.getvalue())


def atomic_write_csv_row(path: str, row: Mapping[str, Any]) -> None:
  """Writes a one-row CSV with a header (used for hparams.csv)."""
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=list(row))
  writer.writeheader()
  writer.writerow({k: _json_safe(v) for k, v in row.items()})
  atomic_write_text(path, buffer.getvalue())


def read_metrics_csv(path: str, up_to_round: int) -> list[dict[str, float]]:
  """Rows of a metrics CSV with `round_num <= up_to_round`, as floats.

  Empty cells (metrics not measured in that round) are left out of the row.
  """
  if not os.path.exists(path):
    return []
  rows = []
  with open(path, newline='') as f:
    for raw in csv.DictReader(f):
      row = {}
      for key, text in raw.items():
        if key is None or text in (None, ''):
          continue
        try:
          row[key] = float(text)
        except ValueError:
          continue
      if 'round_num' in row and row['round_num'] <= up_to_round:
        rows.append(row)
  return rows
