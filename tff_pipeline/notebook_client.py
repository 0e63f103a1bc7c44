"""Runs the pipeline from a notebook whose own Python cannot run TFF.

TFF 0.87.0 needs Python 3.9-3.11; stock Google Colab runs Python 3.13. This
module imports with the standard library alone on Python 3.9-3.13 (matplotlib
only for the plots) and runs the pipeline *beside* the notebook's kernel, in a
pinned Python 3.11 environment:

  from tff_pipeline import notebook_client as nc
  env = nc.ensure_environment()        # finds or builds the environment
  run = nc.run('train_mnist', flagfile='experiments/flags/mnist_fedavg_cnn.flags',
               total_rounds=5)
  run.plot('eval/accuracy')
  nc.summary_table([run])

`ensure_environment()` uses, in order: the environment named by
`TFF_PIPELINE_VENV`; one it built in an earlier call (under
`~/.cache/tff_pipeline`); else it builds one with a Python 3.11 interpreter
(`python3.11` on PATH, `uv python find 3.11`, else `uv python install 3.11`)
and BUILD.md's two-step pinned install, in a temporary directory that is
renamed into place only once TFF imports, so an interrupted install is never
trusted later. `run()` trains through the command-line binaries
(`python -m experiments.train_mnist ...`) in a child process with a clean
environment (no `UV_*`, `PIP_*`, `PYTHONPATH`; `MPLBACKEND=Agg`), shows a
one-line progress display, and returns a `RunResult`. Runs go under
`TFF_PIPELINE_OUTPUT_DIR`, else `./runs`. Interrupting the cell stops the
child, which stops its TFF worker. Every failure is a `NotebookError` whose
message is one sentence saying what to do. See docs/colab.md.
"""

from __future__ import annotations

import csv
import dataclasses
import html
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from tff_pipeline import tf_noise

# The environment: found or built by notebook_environment, re-exported here.
from tff_pipeline.notebook_environment import BINARIES
from tff_pipeline.notebook_environment import build_environment
from tff_pipeline.notebook_environment import child_environment
from tff_pipeline.notebook_environment import DEFAULT_OUTPUT_DIR
from tff_pipeline.notebook_environment import ensure_environment
from tff_pipeline.notebook_environment import Environment
from tff_pipeline.notebook_environment import EnvironmentSetupError
from tff_pipeline.notebook_environment import NotebookError
from tff_pipeline.notebook_environment import OUTPUT_VARIABLE
from tff_pipeline.notebook_environment import project_dir
from tff_pipeline.notebook_environment import PYTHON_VERSION
from tff_pipeline.notebook_environment import READY_FILE
from tff_pipeline.notebook_environment import REQUIREMENT_FILES
from tff_pipeline.notebook_environment import RunFailed
from tff_pipeline.notebook_environment import source_root
from tff_pipeline.notebook_environment import TFF_VERSION
from tff_pipeline.notebook_environment import use_environment
from tff_pipeline.notebook_environment import VENV_VARIABLE


_STOP_GRACE_SECONDS = 20.0


# --- Running the binaries ---------------------------------------------------


class _ProgressLine:
  """One line updated in place: a display handle in IPython, else '\\r'."""

  def __init__(self) -> None:
    self._handle = None
    self._text = ''
    self._display = None
    try:
      from IPython import display  # pylint: disable=import-outside-toplevel
      from IPython import get_ipython  # pylint: disable=import-outside-toplevel
    except ImportError:
      return
    if get_ipython() is not None:
      self._display = display

  def update(self, text: str) -> None:
    text = text.strip()
    if not text or text == self._text:
      return
    self._text = text
    if self._display is not None:
      if self._handle is None:
        self._handle = self._display.display(self._display.Pretty(text),
                                             display_id=True)
      else:
        self._handle.update(self._display.Pretty(text))
    else:
      sys.stdout.write('\r' + text)
      sys.stdout.flush()

  def close(self) -> None:
    if self._display is None and self._text:
      sys.stdout.write('\n')
      sys.stdout.flush()


class _OutputFilter:
  """Splits a child's output into progress updates and lines.

  tqdm redraws its bar after a '\\r'; a segment that follows '\\r' is
  progress, one that follows '\\n' a line. TF's three cuDNN/cuFFT/cuBLAS
  lines are dropped; everything else is passed to `line`.
  """

  def __init__(self, progress: Callable[[str], None],
               line: Callable[[str], None]):
    self._progress = progress
    self._line = line
    self._pending = ''
    self._after_cr = False
    self.lines: list[str] = []

  def feed(self, text: str) -> None:
    self._pending += text
    parts = re.split(r'(\r|\n)', self._pending)
    # parts: segment, delimiter, segment, delimiter, ..., partial segment.
    for i in range(0, len(parts) - 1, 2):
      self._emit(parts[i])
      self._after_cr = parts[i + 1] == '\r'
    self._pending = parts[-1]
    if self._after_cr and self._pending:
      self._progress(self._pending)

  def close(self) -> None:
    if self._pending:
      self._emit(self._pending)
    self._pending = ''

  def _emit(self, segment: str) -> None:
    if self._after_cr:
      self._progress(segment)
    elif segment and not tf_noise.is_noise(segment):
      self.lines.append(segment)
      self._line(segment)


def _descendants(pid: int) -> set[int]:
  """Live descendants of `pid` (Linux /proc), e.g. its TFF worker."""
  children: dict[int, list[int]] = {}
  try:
    entries = os.listdir('/proc')
  except OSError:
    return set()
  for entry in entries:
    if not entry.isdigit():
      continue
    try:
      with open(f'/proc/{entry}/stat', encoding='utf-8') as f:
        fields = f.read().rsplit(')', 1)[1].split()
    except OSError:
      continue
    if fields[0] != 'Z':
      children.setdefault(int(fields[1]), []).append(int(entry))
  found: set[int] = set()
  todo = [pid]
  while todo:
    for child in children.get(todo.pop(), []):
      if child not in found:
        found.add(child)
        todo.append(child)
  return found


def _alive(pids: Iterable[int]) -> set[int]:
  alive = set()
  for pid in pids:
    try:
      with open(f'/proc/{pid}/stat', encoding='utf-8') as f:
        if f.read().rsplit(')', 1)[1].split()[0] != 'Z':
          alive.add(pid)
    except OSError:
      continue
  return alive


def _stop_process(process: subprocess.Popen, started: Iterable[int] = (),
                  grace: float = _STOP_GRACE_SECONDS) -> set[int]:
  """SIGINT, then SIGTERM, then SIGKILL `process` and what it started.

  The child (a pipeline binary) stops its own TFF worker on SIGINT and
  SIGTERM; whatever of its process group is still alive afterwards is
  killed, so no worker outlives the run. `started` adds descendants seen
  earlier (once the child has exited, its orphans are no longer found under
  it). Returns the PIDs that had to be killed.
  """
  started = set(started) | _descendants(process.pid)
  for sig in (signal.SIGINT, signal.SIGTERM):
    if process.poll() is not None:
      break
    try:
      process.send_signal(sig)
      process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
      continue
    except ProcessLookupError:
      break
  killed = set()
  if process.poll() is None:
    process.kill()
    process.wait()
  deadline = time.monotonic() + 5
  left = _alive(started)
  while left and time.monotonic() < deadline:
    time.sleep(0.1)
    left = _alive(started)
  for pid in left:  # Started by our child: ours to stop.
    try:
      os.kill(pid, signal.SIGKILL)
      killed.add(pid)
    except ProcessLookupError:
      pass
  return killed


def _to_number(value: str) -> Any:
  if value == '':
    return None
  try:
    number = float(value)
  except ValueError:
    return value
  return int(number) if number.is_integer() and '.' not in value and (
      'e' not in value.lower()) else number


def read_history(path: str) -> list[dict[str, Any]]:
  """Rows of `experiment.metrics.csv`, numbers as int/float, blanks None."""
  with open(path, newline='', encoding='utf-8') as f:
    return [{k: _to_number(v) for k, v in row.items()}
            for row in csv.DictReader(f)]


@dataclasses.dataclass
class RunPaths:
  """Where a run's files are (`R = <root>/results/<experiment_name>`)."""

  root_output_dir: str
  results_dir: str
  metrics_csv: str
  summary_json: str
  checkpoints_dir: str
  logdir: str

  @classmethod
  def of(cls, root: str, name: str) -> 'RunPaths':
    results = os.path.join(root, 'results', name)
    return cls(root_output_dir=root, results_dir=results,
               metrics_csv=os.path.join(results, 'experiment.metrics.csv'),
               summary_json=os.path.join(results, 'summary.json'),
               checkpoints_dir=os.path.join(root, 'checkpoints', name),
               logdir=os.path.join(root, 'logdir', name))


@dataclasses.dataclass
class RunResult:
  """A finished run: its history, summary, paths, and the command used."""

  name: str
  history: list[dict[str, Any]]
  summary: dict[str, Any]
  paths: RunPaths
  command: list[str]
  seconds: float

  def series(self, metric: str) -> tuple[list[int], list[float]]:
    """(rounds, values) of `metric` over the rounds that report it."""
    rounds, values = [], []
    for row in self.history:
      value = row.get(metric)
      if isinstance(value, (int, float)):
        rounds.append(row['round_num'])
        values.append(float(value))
    if not rounds:
      known = sorted(k for k in (self.history[0] if self.history else {}))
      raise NotebookError(
          f'metric {metric!r} has no values in {self.paths.metrics_csv}; '
          f'its columns are {known}')
    return rounds, values

  def plot(self, metric: str = 'eval/accuracy', ax=None, label=None):
    """Plots `metric` against rounds (matplotlib); returns the axes."""
    return plot_runs([self], metric, ax=ax, labels=[label or self.name])


def plot_runs(runs: Sequence[RunResult], metric: str = 'eval/accuracy',
              ax=None, labels: Sequence[str] | None = None):
  """One line per run of `metric` against rounds, on `ax` or new axes."""
  try:
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise NotebookError(
        'plots need matplotlib: run `pip install matplotlib` in the '
        'notebook') from e
  if ax is None:
    _, ax = plt.subplots(figsize=(6, 3.5))
  for run_result, label in zip(runs, labels or [r.name for r in runs]):
    rounds, values = run_result.series(metric)
    ax.plot(rounds, values, marker='o', markersize=3, label=label)
  ax.set_xlabel('round')
  ax.set_ylabel(metric)
  ax.grid(alpha=0.3)
  ax.legend()
  return ax


class Table:
  """Rows shown as an HTML table in a notebook and as text elsewhere."""

  def __init__(self, columns: Sequence[str], rows: Sequence[Sequence[Any]]):
    self.columns = list(columns)
    self.rows = [list(r) for r in rows]

  @staticmethod
  def _cell(value: Any) -> str:
    if isinstance(value, float):
      return f'{value:.4f}'
    return '' if value is None else str(value)

  def _repr_html_(self) -> str:
    head = ''.join(f'<th>{html.escape(c)}</th>' for c in self.columns)
    body = ''.join(
        '<tr>' + ''.join(f'<td>{html.escape(self._cell(v))}</td>' for v in row)
        + '</tr>' for row in self.rows)
    return f'<table><tr>{head}</tr>{body}</table>'

  def __str__(self) -> str:
    cells = [self.columns] + [[self._cell(v) for v in r] for r in self.rows]
    widths = [max(len(row[i]) for row in cells)
              for i in range(len(self.columns))]
    return '\n'.join(
        '  '.join(v.ljust(w) for v, w in zip(row, widths)).rstrip()
        for row in cells)

  __repr__ = __str__


DEFAULT_TABLE_KEYS = ('final_eval_accuracy', 'rounds_completed',
                      'python_version', 'tensorflow_federated_version')


def summary_table(runs: Sequence[RunResult],
                  keys: Sequence[str] = DEFAULT_TABLE_KEYS) -> Table:
  """A table with one row per run and one column per summary key."""
  return Table(['run', *keys],
               [[r.name, *(r.summary.get(k) for k in keys)] for r in runs])


def _flag_arguments(flags: Mapping[str, Any]) -> list[str]:
  arguments = []
  for name, value in flags.items():
    if isinstance(value, bool):
      arguments.append(f'--{name}' if value else f'--no{name}')
    elif isinstance(value, (list, tuple)):
      arguments.append(f'--{name}={",".join(str(v) for v in value)}')
    else:
      arguments.append(f'--{name}={value}')
  return arguments


def output_dir() -> str:
  """`TFF_PIPELINE_OUTPUT_DIR`, else `runs` in the working directory."""
  return os.path.abspath(
      os.environ.get(OUTPUT_VARIABLE) or DEFAULT_OUTPUT_DIR)


def _resolve_flagfile(flagfile: str) -> str:
  for candidate in (flagfile, os.path.join(source_root(), flagfile)):
    if os.path.isfile(candidate):
      return os.path.abspath(candidate)
  raise NotebookError(
      f'flagfile {flagfile} not found (looked in {os.getcwd()} and '
      f'{source_root()}): pass a path such as '
      'experiments/flags/mnist_fedavg_cnn.flags')


def run(binary: str = 'train_mnist', flagfile: str | None = None, *,
        experiment_name: str | None = None,
        environment: Environment | None = None,
        progress: bool = True,
        echo: Callable[[str], None] | None = None,
        **flags: Any) -> RunResult:
  """Trains with a pipeline binary in the pinned environment.

  Args:
    binary: 'train_mnist' or 'train_regression'.
    flagfile: a flagfile, relative to the working directory or the checkout
      (e.g. 'experiments/flags/mnist_fedavg_cnn.flags'); later flags win.
    experiment_name: names the run; default the flagfile's name, else the
      binary's.
    environment: from `ensure_environment()` (called when None).
    progress: show the one-line progress display.
    echo: receives the child's other output lines (default: print).
    **flags: the binary's flags, e.g. `total_rounds=5, aggregator='mean'`
      (booleans become --name / --noname). `root_output_dir` defaults to
      `output_dir()`.

  Returns:
    The run's `RunResult`.

  Raises:
    NotebookError: bad arguments, or the run failed (its `error:` line).
    KeyboardInterrupt: after stopping the child and its TFF worker.
  """
  if binary not in BINARIES:
    raise NotebookError(
        f'unknown binary {binary!r}: use one of {sorted(BINARIES)}')
  environment = environment or ensure_environment()
  arguments = []
  name = experiment_name
  if flagfile:
    path = _resolve_flagfile(flagfile)
    arguments.append(f'--flagfile={path}')
    stem = os.path.basename(path)
    name = name or (stem[:-len('.flags')] if stem.endswith('.flags') else stem)
  name = name or binary
  root = os.path.abspath(flags.pop('root_output_dir', None) or output_dir())
  arguments += _flag_arguments(flags)
  arguments += [f'--experiment_name={name}', f'--root_output_dir={root}']
  command = [environment.python, '-m', BINARIES[binary], *arguments]

  line = _ProgressLine() if progress else None
  echo = echo or (lambda text: print(text, flush=True))
  output = _OutputFilter(line.update if line else (lambda _: None), echo)
  start = time.monotonic()
  process = subprocess.Popen(
      command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      env=environment.env(), start_new_session=True)
  started: set[int] = set()  # The child's descendants: its TFF worker.
  try:
    fd = process.stdout.fileno()
    next_scan = 0.0
    while True:
      if time.monotonic() >= next_scan:  # At most once a second.
        started |= _descendants(process.pid)
        next_scan = time.monotonic() + 1.0
      ready, _, _ = select.select([fd], [], [], 1.0)
      if not ready:
        continue
      chunk = os.read(fd, 65536)
      if not chunk:
        break
      output.feed(chunk.decode('utf-8', 'replace'))
    code = process.wait()
  except BaseException:
    _stop_process(process, started)
    raise
  finally:
    output.close()
    if line:
      line.close()
    process.stdout.close()
  # The child stops its worker on every exit path; make sure nothing is left.
  _stop_process(process, started)
  paths = RunPaths.of(root, name)
  if code != 0:
    errors_seen = [l for l in output.lines if l.startswith('error:')]
    reason = (errors_seen or output.lines or [f'exit code {code}'])[-1]
    raise RunFailed(f'run {name} failed: {reason.removeprefix("error: ")}')
  try:
    with open(paths.summary_json, encoding='utf-8') as f:
      summary = json.load(f)
    history = read_history(paths.metrics_csv)
  except (OSError, ValueError) as e:
    raise RunFailed(
        f'run {name} finished but its results in {paths.results_dir} cannot '
        f'be read ({e})') from e
  return RunResult(name=name, history=history, summary=summary, paths=paths,
                   command=command, seconds=time.monotonic() - start)
