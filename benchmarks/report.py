"""Reporting benchmark numbers: medians, aligned tables, JSON, and the facts
of the environment they were measured in."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from tff_pipeline.training import outputs

MIB = 1024 * 1024


def median(values: Sequence[float]) -> float:
  """Median of a non-empty sequence."""
  return float(statistics.median(values))


def _git(*args: str) -> str | None:
  try:
    return subprocess.run(
        ['git', *args], cwd=os.path.dirname(os.path.abspath(__file__)),
        capture_output=True, text=True, timeout=10, check=True,
    ).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return None


def library_version() -> dict[str, Any]:
  """The commit of the checkout, and the files changed since (the library
  may be edited between runs, which changes what is measured)."""
  status = _git('status', '--porcelain', '--', ':/tff_pipeline')
  return {
      'git_head': _git('rev-parse', '--short', 'HEAD'),
      'tff_pipeline_changed_files': (
          None if status is None else len(status.splitlines())),
  }


def environment_facts() -> dict[str, Any]:
  """Versions, cores, load and other TFF workers on the machine."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top

  return {
      **library_version(),
      'date_utc': datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec='seconds'),
      'python': platform.python_version(),
      'tensorflow': tf.__version__,
      'tensorflow_federated': tff.__version__,
      'os_cpu_count': os.cpu_count(),
      'sched_affinity_cpus': (len(os.sched_getaffinity(0))
                              if hasattr(os, 'sched_getaffinity') else None),
      'machine': platform.machine(),
      'loadavg_1_5_15': list(os.getloadavg()),
  }


def fmt_seconds(value: float | None) -> str:
  return 'n/a' if value is None else f'{value:.3f} s'


def fmt_mib(value: float | None) -> str:
  return 'n/a' if value is None else f'{value / MIB:,.0f} MiB'


def print_table(title: str, rows: Sequence[tuple[str, str]],
                file: Any = None) -> None:
  """Prints (label, value) rows under a title, aligned; '' label = rule."""
  file = file or sys.stdout
  width = max((len(label) for label, _ in rows), default=0)
  print(f'\n{title}\n{"=" * len(title)}', file=file)
  for label, value in rows:
    if not label and not value:
      print('-' * (width + 24), file=file)
    else:
      print(f'{label:<{width}}  {value}', file=file)
  file.flush()


def print_grid(title: str, header: Sequence[str],
               rows: Sequence[Sequence[str]], file: Any = None) -> None:
  """Prints a table with a header row, columns right-aligned."""
  file = file or sys.stdout
  cells = [list(header)] + [list(r) for r in rows]
  widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
  print(f'\n{title}\n{"=" * len(title)}', file=file)
  for n, row in enumerate(cells):
    print('  '.join(c.rjust(w) for c, w in zip(row, widths)), file=file)
    if n == 0:
      print('  '.join('-' * w for w in widths), file=file)
  file.flush()


def write_json(path: str, data: Mapping[str, Any]) -> None:
  """Writes `data` as JSON atomically, creating its directory.

  The pipeline's own writer (`outputs.atomic_write_json`): NumPy values
  become Python ones and non-finite floats become null.
  """
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  outputs.atomic_write_json(path, data)
