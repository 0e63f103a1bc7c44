"""A `tff.program.ProgramStateManager` that writes NumPy `.npz` files.

TFF's `tff.program.FileProgramStateManager` writes each version as a
TensorFlow SavedModel: it wraps every value in a new `tf.Variable`, traces a
`tf.Module` and saves it. What TensorFlow keeps of that in the process grows
with every save (0.42 MiB a save of the 2NN's state measured here, see
docs/memory.md), which over thousands of rounds broke the memory bound of
the soak benchmark. The program state of this pipeline is a nest of NumPy
arrays and scalars, so this manager writes exactly those and creates no
TensorFlow object at all:

  <root_dir>/<prefix><version>/state.npz

Each version is a directory holding one uncompressed `.npz` file (the same
names as TFF's manager, so a directory listing, `corrupt_<prefix><version>`
and old runs look as before). The file holds the leaves of the structure,
flattened in `_structure.flatten_with_paths` order as `leaf_0`, `leaf_1`,
..., their paths in the structure as `paths` (the structure check on load)
and a format tag. A version is written to a hidden temporary directory
(file fsynced), which is then renamed into place and the parent directory
fsynced: a crash leaves either the whole version or none of it. `np.load`
reads it with `allow_pickle=False`, and zip's CRC-32 of every member catches
a damaged file.

`get_versions`, `load`, `save` and `remove` (with `keep_total`, dropping the
oldest) follow `tff.program.ProgramStateManager`'s contract: `load` raises
`ProgramStateNotFoundError` for a missing version and `save`
`ProgramStateExistsError` for an existing one.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from collections.abc import Sequence
from typing import Any

from absl import logging
import numpy as np
import tensorflow_federated as tff

from tff_pipeline import _structure
from tff_pipeline.training import outputs

STATE_FILE = 'state.npz'
FORMAT = 'tff_pipeline.program_state.npz/1'
_FORMAT_KEY = 'format'
_PATHS_KEY = 'paths'
_LEAF = 'leaf_{}'


class StructureMismatchError(ValueError):
  """A saved state does not have the structure it is loaded as."""


def _leaf_array(path: str, value: Any) -> np.ndarray:
  array = np.asarray(value)
  if array.dtype.hasobject:
    raise TypeError(
        f'program state leaf {path!r} ({type(value).__name__}) is not an '
        'array of numbers or strings')
  return array


def _compatible(saved: np.ndarray, template: Any) -> bool:
  """Same shape and the same kind of dtype (float, int, bool, str, ...)."""
  expected = np.asarray(template)
  if expected.dtype.hasobject:
    return True  # A placeholder leaf: only its place in the structure counts.
  return (saved.shape == expected.shape
          and saved.dtype.kind == expected.dtype.kind)


def encode(program_state: Any) -> bytes:
  """The `.npz` bytes of `program_state` (a nest of arrays and scalars)."""
  leaves = _structure.flatten_with_paths(program_state)
  arrays = {_LEAF.format(i): _leaf_array(path, value)
            for i, (path, value) in enumerate(leaves)}
  arrays[_PATHS_KEY] = np.array([path for path, _ in leaves], dtype=np.str_)
  arrays[_FORMAT_KEY] = np.array(FORMAT)
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  return buffer.getvalue()


def decode(data: bytes, structure: Any) -> Any:
  """Program state in the containers of `structure` from `encode`'s bytes.

  Leaves come back as NumPy arrays, and 0-d ones as NumPy scalars, as TFF's
  `FileProgramStateManager` returns them.

  Raises:
    StructureMismatchError: if the saved paths, shapes or kinds of dtype
      differ from those of `structure`.
    ValueError, KeyError, EOFError, zipfile.BadZipFile: if the data is not
      a complete file of this format.
  """
  with np.load(io.BytesIO(data), allow_pickle=False) as saved:
    if str(saved[_FORMAT_KEY]) != FORMAT:
      raise ValueError(f'not a {FORMAT} file: {saved[_FORMAT_KEY]}')
    saved_paths = [str(p) for p in saved[_PATHS_KEY]]
    arrays = [saved[_LEAF.format(i)] for i in range(len(saved_paths))]
  template = _structure.flatten_with_paths(structure)
  expected_paths = [path for path, _ in template]
  if saved_paths != expected_paths:
    missing = [p for p in expected_paths if p not in saved_paths]
    extra = [p for p in saved_paths if p not in expected_paths]
    raise StructureMismatchError(
        f'it holds {len(saved_paths)} values, {len(expected_paths)} expected'
        f' (missing: {missing[:3] or "none"}; unexpected: '
        f'{extra[:3] or "none"})')
  for path, array, (_, value) in zip(saved_paths, arrays, template):
    if not _compatible(array, value):
      expected = np.asarray(value)
      raise StructureMismatchError(
          f'{path!r} is {array.dtype}{list(array.shape)}, expected '
          f'{expected.dtype}{list(expected.shape)}')
  return _structure.pack_like(
      structure, [a[()] if a.ndim == 0 else a for a in arrays])


class NpzProgramStateManager(tff.program.ProgramStateManager):
  """Saves each version of the program state as `<prefix><version>/state.npz`.

  Args:
    root_dir: Directory of the versions; created if missing.
    prefix: Name of a version's directory before its number.
    keep_total: How many versions to keep; the oldest are removed after a
      save. Zero or less keeps all.

  Temporary directories that a crash during a save left behind are removed
  when the manager is created.
  """

  def __init__(self, root_dir: str, prefix: str = 'program_state_',
               keep_total: int = 5):
    os.makedirs(root_dir, exist_ok=True)
    self._root_dir = root_dir
    self._prefix = prefix
    self._keep_total = keep_total
    for entry in os.listdir(root_dir):
      if entry.startswith(f'.{prefix}'):
        shutil.rmtree(os.path.join(root_dir, entry), ignore_errors=True)

  def path(self, version: int) -> str:
    """The directory of `version` (it may not exist)."""
    return os.path.join(self._root_dir, f'{self._prefix}{version}')

  def state_file(self, version: int) -> str:
    return os.path.join(self.path(version), STATE_FILE)

  def versions(self) -> list[int]:
    """Versions present on disk (any directory `<prefix><int>`), sorted."""
    found = []
    for entry in os.listdir(self._root_dir):
      suffix = entry[len(self._prefix):]
      if (entry.startswith(self._prefix) and suffix.isdigit()
          and os.path.isdir(os.path.join(self._root_dir, entry))):
        found.append(int(suffix))
    return sorted(found)

  async def get_versions(self) -> list[int] | None:
    return self.versions() or None

  async def load(self, version: int, structure: Any) -> Any:
    path = self.state_file(version)
    if not os.path.isdir(self.path(version)):
      raise tff.program.ProgramStateNotFoundError(version)
    with open(path, 'rb') as f:
      state = decode(f.read(), structure)
    logging.info('Program state loaded: %s', path)
    return state

  async def save(self, program_state: Any, version: int) -> None:
    final = self.path(version)
    if os.path.exists(final):
      raise tff.program.ProgramStateExistsError(
          version=version, path=self._root_dir)
    data = encode(program_state)
    temp = tempfile.mkdtemp(dir=self._root_dir,
                            prefix=f'.{self._prefix}{version}.')
    try:
      outputs.atomic_write_bytes(os.path.join(temp, STATE_FILE), data)
      _fsync_directory(temp)
      os.rename(temp, final)
    except BaseException:
      shutil.rmtree(temp, ignore_errors=True)
      raise
    _fsync_directory(self._root_dir)
    logging.info('Program state saved: %s', final)
    self._remove_old(self.versions())

  async def remove(self, version: int) -> None:
    """Removes `version` (a missing one is not an error)."""
    self._remove_versions([version])

  def _remove_old(self, versions: Sequence[int]) -> None:
    if self._keep_total > 0 and len(versions) > self._keep_total:
      self._remove_versions(versions[:len(versions) - self._keep_total])

  def _remove_versions(self, versions: Sequence[int]) -> None:
    for version in versions:
      if os.path.isdir(self.path(version)):
        shutil.rmtree(self.path(version))
        logging.info('Program state removed: %s', self.path(version))


def _fsync_directory(path: str) -> None:
  """Makes a rename or a new entry in `path` durable (POSIX)."""
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return  # Not openable as a directory (e.g. Windows): nothing to sync.
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)
