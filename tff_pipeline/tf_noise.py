"""Keeps TensorFlow 2.14's three cuDNN/cuFFT/cuBLAS factory lines out of sight.

Importing TensorFlow 2.14.1 (the version TFF 0.87 pins) prints three
error-level lines, whatever `TF_CPP_MIN_LOG_LEVEL` below 3 says:

  E .../cuda_dnn.cc:9342] Unable to register cuDNN factory: Attempting to
  register factory for plugin cuDNN when one has already been registered

(and the same for cuFFT and cuBLAS). They are harmless (tensorflow/tensorflow
#62075) but look like a failure to a newcomer. `install()` filters exactly
these three lines, and only while `tensorflow` is first imported: fd 2 goes
to a temporary file for the import, then everything else in it is written
back to the real stderr, so every other message (including a failed import's
own) still reaches the user. Standard library only: the notebook client
applies the same `is_noise` to its child's output. BUILD.md explains why this
and not the CPU-only TensorFlow build.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile
from collections.abc import Iterator

# One line of TF's C++ log (optionally timestamped) per plugin, exactly.
_NOISE = re.compile(
    r'^(?:\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: )?E \S+\] Unable to register '
    r'(cuDNN|cuFFT|cuBLAS) factory: Attempting to register factory for '
    r'plugin \1 when one has already been registered$')


def is_noise(line: str) -> bool:
  """Whether `line` (without its line break) is one of the three lines."""
  return _NOISE.match(line.rstrip('\r\n')) is not None


def filter_text(data: bytes) -> bytes:
  """`data` without the lines `is_noise` matches; all other bytes kept."""
  lines = data.splitlines(keepends=True)
  return b''.join(
      line for line in lines
      if not is_noise(line.decode('utf-8', 'replace')))


@contextlib.contextmanager
def filtered_stderr() -> Iterator[None]:
  """Runs the body with fd 2 captured, then replays it minus the noise."""
  try:
    sys.stderr.flush()
    saved = os.dup(2)
  except (OSError, AttributeError, ValueError):
    yield  # No real fd 2 (an embedded interpreter): nothing to filter.
    return
  with tempfile.TemporaryFile() as capture:
    os.dup2(capture.fileno(), 2)
    try:
      yield
    finally:
      try:
        sys.stderr.flush()
      except (OSError, ValueError):
        pass
      os.dup2(saved, 2)
      os.close(saved)
      capture.seek(0)
      kept = filter_text(capture.read())
      if kept:
        os.write(2, kept)


class _QuietLoader(importlib.abc.Loader):
  """Runs the wrapped loader's `exec_module` inside `filtered_stderr`."""

  def __init__(self, loader: importlib.abc.Loader):
    self._loader = loader

  def create_module(self, spec):
    return self._loader.create_module(spec)

  def exec_module(self, module) -> None:
    with filtered_stderr():
      self._loader.exec_module(module)

  def __getattr__(self, name: str):
    return getattr(self._loader, name)


class _TensorFlowFinder(importlib.abc.MetaPathFinder):
  """Finds `tensorflow` once, through the other finders, with a quiet loader."""

  def find_spec(self, name, path=None, target=None):
    if name != 'tensorflow':
      return None
    uninstall()
    spec = importlib.util.find_spec(name)
    if spec is not None and spec.loader is not None:
      spec.loader = _QuietLoader(spec.loader)
    return spec


_FINDER = _TensorFlowFinder()


def install() -> None:
  """Filters the three lines out of the first `import tensorflow`.

  Costs nothing until TensorFlow is imported, and nothing if it is already.
  """
  if 'tensorflow' not in sys.modules and _FINDER not in sys.meta_path:
    sys.meta_path.insert(0, _FINDER)


def uninstall() -> None:
  with contextlib.suppress(ValueError):
    sys.meta_path.remove(_FINDER)
