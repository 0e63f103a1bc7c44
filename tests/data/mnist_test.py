"""MNIST loading: packaged copy, Keras npz, IDX files, and bad input."""

import functools
import gzip
import os
import pickle

import numpy as np
import pytest

from tff_pipeline import errors
from tff_pipeline.data import mnist


def test_packaged_copy_is_the_standard_split(mnist_arrays):
  a = mnist_arrays
  assert a.train_x.shape == (60000, 784) and a.train_x.dtype == np.float32
  assert a.test_x.shape == (10000, 784) and a.test_y.shape == (10000,)
  assert 0.0 <= a.train_x.min() and a.train_x.max() <= 1.0
  # Class counts of the standard MNIST training and test sets.
  assert np.bincount(a.train_y).tolist() == [
      5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
  assert np.bincount(a.test_y).tolist() == [
      980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _as_uint8(images):
  return np.round(images * 255).astype(np.uint8).reshape(-1, 28, 28)


def test_keras_npz_gives_the_same_data(tmp_path, mnist_arrays):
  a = mnist_arrays
  path = tmp_path / 'mnist.npz'
  np.savez(path, x_train=_as_uint8(a.train_x), y_train=a.train_y.astype(np.uint8),
           x_test=_as_uint8(a.test_x), y_test=a.test_y.astype(np.uint8))
  loaded = mnist.load_mnist(str(path))
  np.testing.assert_allclose(loaded.train_x, a.train_x, atol=0.5 / 255 + 1e-6)
  np.testing.assert_array_equal(loaded.test_y, a.test_y)


def _write_idx(path, array, gz=False):
  dims = array.shape
  magic = 0x0803 if array.ndim == 3 else 0x0801
  data = (magic.to_bytes(4, 'big')
          + b''.join(d.to_bytes(4, 'big') for d in dims)
          + array.astype(np.uint8).tobytes())
  # Level 1: the loader does not care, and level 9 takes ~10 s for 47 MB.
  opener = functools.partial(gzip.open, compresslevel=1) if gz else open
  with opener(path, 'wb') as f:
    f.write(data)


@pytest.mark.parametrize('gz', [False, True])
def test_idx_directory_gives_the_same_data(tmp_path, mnist_arrays, gz):
  a = mnist_arrays
  suffix = '.gz' if gz else ''
  _write_idx(tmp_path / f'train-images-idx3-ubyte{suffix}', _as_uint8(a.train_x), gz)
  _write_idx(tmp_path / f'train-labels-idx1-ubyte{suffix}', a.train_y, gz)
  _write_idx(tmp_path / f't10k-images-idx3-ubyte{suffix}', _as_uint8(a.test_x), gz)
  _write_idx(tmp_path / f't10k-labels-idx1-ubyte{suffix}', a.test_y, gz)
  loaded = mnist.load_mnist(str(tmp_path))
  np.testing.assert_allclose(loaded.test_x, a.test_x, atol=0.5 / 255 + 1e-6)
  np.testing.assert_array_equal(loaded.train_y, a.train_y)


def test_missing_path_names_the_flag(tmp_path):
  with pytest.raises(errors.DataError, match='--mnist_path=.*no such file'):
    mnist.load_mnist(str(tmp_path / 'nope.npz'))


@pytest.mark.parametrize('content', [b'', b'garbage' * 100, b'PK\x03\x04trunc'])
def test_garbage_npz_is_a_data_error(tmp_path, content):
  path = tmp_path / 'mnist.npz'
  path.write_bytes(content)
  with pytest.raises(errors.DataError, match='mnist.npz'):
    mnist.load_mnist(str(path))


def test_npz_with_wrong_arrays_is_a_data_error(tmp_path):
  path = tmp_path / 'mnist.npz'
  np.savez(path, x_train=np.zeros((5, 28, 28), np.uint8))
  with pytest.raises(errors.DataError, match='lacks arrays'):
    mnist.load_mnist(str(path))


def test_npz_with_wrong_shapes_is_a_data_error(tmp_path):
  path = tmp_path / 'mnist.npz'
  np.savez(path, x_train=np.zeros((5, 28, 28), np.uint8),
           y_train=np.zeros(5, np.uint8), x_test=np.zeros((5, 28, 28), np.uint8),
           y_test=np.zeros(5, np.uint8))
  with pytest.raises(errors.DataError, match='shape'):
    mnist.load_mnist(str(path))


def test_truncated_idx_is_a_data_error(tmp_path):
  header = (0x0803).to_bytes(4, 'big') + b''.join(
      d.to_bytes(4, 'big') for d in (10, 28, 28))
  with pytest.raises(errors.DataError, match='promises 7840 bytes'):
    mnist.parse_idx(header + b'\0' * 100, 'x')
  with pytest.raises(errors.DataError, match='magic'):
    mnist.parse_idx(b'\xff' * 16, 'x')
  with pytest.raises(errors.DataError, match='truncated'):
    mnist.parse_idx(b'\0\0', 'x')


def test_idx_directory_missing_a_file(tmp_path):
  with pytest.raises(errors.DataError, match='missing IDX file'):
    mnist.load_mnist(str(tmp_path))


class _Evil:
  def __reduce__(self):
    return (os.system, ('echo pwned',))


def test_restricted_unpickler_refuses_forbidden_globals():
  with pytest.raises(pickle.UnpicklingError, match='forbidden global'):
    mnist.restricted_loads(pickle.dumps(_Evil()))
  # Exactly what an ndarray needs is allowed.
  array = np.arange(6, dtype=np.float32).reshape(2, 3)
  np.testing.assert_array_equal(mnist.restricted_loads(pickle.dumps(array)),
                                array)


def test_pickle_file_with_wrong_hash_is_refused(tmp_path):
  path = tmp_path / 'mnist.pkl.gz'
  with gzip.open(path, 'wb') as f:
    f.write(pickle.dumps(_Evil()))
  with pytest.raises(errors.DataError, match='SHA-256'):
    mnist.load_mnist(str(path))


def test_packaged_file_matches_pinned_hash():
  path = mnist.packaged_mnist_path()
  assert mnist._sha256(path) == mnist.PACKAGED_SHA256  # pylint: disable=protected-access
