"""Hostile input: fuzzing the data loaders, the configs and the binaries' flags.

Bad input must be answered in the library by a `errors.PipelineError`
subclass that names the flag or file, and in the binaries by exactly one
`error:` line on stderr and a non-zero exit: never a traceback, a hang, a
leaked TFF worker or a damaged output directory.

Hypothesis is derandomized and keeps no example database, so every run (and
CI) tries the same examples. The binaries cost about 5 s of TensorFlow import
per run: the default suite runs a handful of them, `make test-slow` many more.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import gzip
import io
import json
import math
import os
import pathlib
import pickle
import re
import shutil
import subprocess
import tempfile
import zipfile
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck
from hypothesis import event
from hypothesis import example
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from tests import helpers
from tff_pipeline import config as config_lib
from tff_pipeline import errors
from tff_pipeline import faults as faults_lib
from tff_pipeline import heterogeneity as heterogeneity_lib
from tff_pipeline.data import mnist
from tff_pipeline.data import partition
from tff_pipeline.data import regression


def _settings(max_examples: int) -> settings:
  """Deterministic settings: the same examples on every run, no database."""
  return settings(
      max_examples=max_examples,
      derandomize=True,
      database=None,
      deadline=None,
      print_blob=False,
      suppress_health_check=[
          HealthCheck.too_slow,
          HealthCheck.data_too_large,
          HealthCheck.large_base_example,
      ],
  )


@contextlib.contextmanager
def _fresh_dir():
  """A new temporary directory: `load_mnist` caches by (path, mtime)."""
  with tempfile.TemporaryDirectory(prefix='tff_fuzz_') as directory:
    yield pathlib.Path(directory)


@contextlib.contextmanager
def _small_split(num_train: int = 60, num_test: int = 10):
  """Makes the loaders expect a tiny split, so valid files are cheap."""
  with mock.patch.object(mnist, 'NUM_TRAIN', num_train), \
      mock.patch.object(mnist, 'NUM_TEST', num_test):
    yield


def _assert_data_error(path, load=mnist.load_mnist) -> str:
  """`load(path)` raises DataError (nothing else), in one line naming path."""
  with pytest.raises(errors.DataError) as info:
    load(str(path))
  message = str(info.value)
  assert str(path) in message, message
  assert '\n' not in message and '\r' not in message, message
  return message


def _assert_valid_split(arrays: mnist.MnistArrays) -> None:
  for name, rows in (('train', mnist.NUM_TRAIN), ('test', mnist.NUM_TEST)):
    x, y = getattr(arrays, f'{name}_x'), getattr(arrays, f'{name}_y')
    assert x.shape == (rows, mnist.IMAGE_SIZE) and x.dtype == np.float32
    assert y.shape == (rows,) and y.dtype == np.int32
    assert np.all(np.isfinite(x)) and x.min() >= 0 and x.max() <= 1
    assert y.min() >= 0 and y.max() < mnist.NUM_CLASSES


# A command that, if a pickle ever ran it, would create this file.
_MARKER = os.path.join(tempfile.gettempdir(),
                       f'tff_fuzz_pickle_marker_{os.getpid()}')


@pytest.fixture(autouse=True, scope='module')
def _no_marker():
  if os.path.exists(_MARKER):
    os.remove(_MARKER)
  yield
  executed = os.path.exists(_MARKER)
  if executed:
    os.remove(_MARKER)
  assert not executed, 'a pickle executed a forbidden global'


def _assert_nothing_executed() -> None:
  assert not os.path.exists(_MARKER), 'a pickle executed a forbidden global'


# --------------------------------------------------------------------------
# Random bytes and damaged Keras .npz files.


def _npy_bytes(array: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  np.save(buffer, array)
  return buffer.getvalue()


def _npz_member_with_shape(shape: str) -> bytes:
  """An .npz whose x_train header promises `shape` but holds 10 bytes."""
  header = ("{'descr': '|u1', 'fortran_order': False, 'shape': %s, }" % shape)
  header = header.ljust(117) + '\n'
  member = (b'\x93NUMPY\x01\x00' + len(header).to_bytes(2, 'little')
            + header.encode('latin1') + b'\0' * 10)
  buffer = io.BytesIO()
  with zipfile.ZipFile(buffer, 'w') as archive:
    archive.writestr('x_train.npy', member)
    for key in ('y_train', 'x_test', 'y_test'):
      archive.writestr(f'{key}.npy', _npy_bytes(np.zeros(3, np.uint8)))
  return buffer.getvalue()


_BYTES = st.one_of(
    st.binary(max_size=600),
    st.binary(max_size=300).map(lambda b: b'PK\x03\x04' + b),
    st.binary(max_size=300).map(lambda b: b'\x93NUMPY\x01\x00' + b),
    st.binary(max_size=300).map(lambda b: b'\x1f\x8b\x08\x00' + b),
    st.binary(max_size=300).map(lambda b: b'\x80\x04\x95' + b),
)


@_settings(60)
@given(content=_BYTES,
       name=st.sampled_from(['mnist.npz', 'data', 'mnist.pkl.gz', 'x.npy']))
@example(content=b'', name='mnist.npz')
@example(content=_npy_bytes(np.zeros((3, 2), np.uint8)), name='mnist.npz')
@example(content=pickle.dumps({'x_train': 1}), name='mnist.npz')
@example(content=_npz_member_with_shape('(1000000000000,)'), name='mnist.npz')
@example(content=_npz_member_with_shape('(-5,)'), name='mnist.npz')
@example(content=_npz_member_with_shape("('a',)"), name='mnist.npz')
@example(content=_npz_member_with_shape('(1, 2'), name='mnist.npz')
def test_random_bytes_are_a_data_error(content, name):
  with _fresh_dir() as directory:
    path = directory / name
    path.write_bytes(content)
    _assert_data_error(path)


@functools.lru_cache(maxsize=None)
def _valid_npz() -> bytes:
  """A full-size, valid, compressed Keras mnist.npz (mostly zeros)."""
  rng = np.random.default_rng(0)
  arrays = {}
  for split, rows in (('train', mnist.NUM_TRAIN), ('test', mnist.NUM_TEST)):
    images = np.zeros((rows, 28, 28), np.uint8)
    images[rng.integers(0, rows, 500), 14, 14] = 255
    arrays[f'x_{split}'] = images
    arrays[f'y_{split}'] = (np.arange(rows) % 10).astype(np.uint8)
  buffer = io.BytesIO()
  np.savez_compressed(buffer, **arrays)
  return buffer.getvalue()


def test_the_valid_npz_used_for_damage_loads():
  with _fresh_dir() as directory:
    path = directory / 'mnist.npz'
    path.write_bytes(_valid_npz())
    _assert_valid_split(mnist.load_mnist(str(path)))


@_settings(40)
@given(fraction=st.floats(0, 1, exclude_max=True))
@example(fraction=0.0)
def test_truncated_npz_is_a_data_error(fraction):
  content = _valid_npz()
  with _fresh_dir() as directory:
    path = directory / 'mnist.npz'
    path.write_bytes(content[:int(fraction * len(content))])
    _assert_data_error(path)


@_settings(40)
@given(offset=st.one_of(st.integers(0, 400), st.integers(-400, -1),
                        st.floats(0, 1)),
       mask=st.integers(1, 255))
def test_npz_with_a_damaged_byte_is_a_data_error_or_still_valid(offset, mask):
  content = bytearray(_valid_npz())
  if isinstance(offset, float):
    offset = int(offset * (len(content) - 1))
  content[offset] ^= mask
  event(_assert_damaged_npz_fails_cleanly_or_loads(bytes(content)))


def _assert_damaged_npz_fails_cleanly_or_loads(content: bytes) -> str:
  """Loads `content` as mnist.npz: a one-line DataError naming the file, or
  (the damage hit something nothing checks, e.g. a timestamp) a valid split."""
  with _fresh_dir() as directory:
    path = directory / 'mnist.npz'
    path.write_bytes(content)
    try:
      arrays = mnist.load_mnist(str(path))
    except errors.DataError as e:
      assert str(path) in str(e) and '\n' not in str(e)
      return 'data error'
    _assert_valid_split(arrays)
    return 'still valid'


# (signature, offset of the field in the header, bits to flip): the flag bits
# and the compression method of zip local (PK34) and central (PK12) headers.
_ZIP_HEADER_DAMAGE = [
    (signature, offset + field, mask)
    for signature, offset in ((b'PK\x03\x04', 0), (b'PK\x01\x02', 2))
    for field, mask in ((6, 0x01), (6, 0x08), (6, 0x20), (6, 0x40),
                        (7, 0x20), (8, 0x07), (8, 0x08), (9, 0x01))
]


@pytest.mark.parametrize('signature, field, mask', _ZIP_HEADER_DAMAGE)
def test_npz_with_damaged_zip_headers_is_a_data_error_or_still_valid(
    signature, field, mask):
  """Encryption, patch-data and unknown-method flags on every member."""
  content = bytearray(_valid_npz())
  start = content.find(signature)
  while start >= 0:
    content[start + field] ^= mask
    start = content.find(signature, start + 1)
  _assert_damaged_npz_fails_cleanly_or_loads(bytes(content))


class _EvilReduce:
  """Pickles as a call of `function(*args)`."""

  def __init__(self, function, *args):
    self.function = function
    self.args = args

  def __reduce__(self):
    return self.function, self.args


def _evil_objects():
  """Objects whose unpickling would create `_MARKER`."""
  return [
      _EvilReduce(os.system, f'touch {_MARKER}'),
      _EvilReduce(subprocess.call, ['touch', _MARKER]),
      _EvilReduce(open, _MARKER, 'w'),
      _EvilReduce(exec, f'open({_MARKER!r}, "w").close()'),
      _EvilReduce(eval, f'open({_MARKER!r}, "w")'),
      _EvilReduce(pathlib.Path.touch, pathlib.Path(_MARKER)),
      _EvilReduce(np.save, _MARKER, np.zeros(1)),
      _EvilReduce(shutil.copy, os.devnull, _MARKER),
  ]


def _image_array(variant: str, rows: int):
  """Images of a given kind; the `_VALID_IMAGES` kinds are valid."""
  shape = (rows, 28, 28)
  return {
      'ok': lambda: np.full(shape, 7, np.uint8),
      'ok_flat': lambda: np.full((rows, 784), 255, np.uint8),
      'float32': lambda: np.full(shape, 0.5, np.float32),
      'float_nan': lambda: np.full(shape, np.nan, np.float64),
      'int64': lambda: np.full(shape, 300, np.int64),
      'int8': lambda: np.full(shape, -1, np.int8),
      'bool': lambda: np.ones(shape, bool),
      'complex': lambda: np.ones(shape, np.complex64),
      'object': lambda: np.array([{'a': 1}] * rows, dtype=object),
      'evil_object': lambda: np.array(_evil_objects(), dtype=object),
      'str': lambda: np.array(['x'] * rows),
      'structured': lambda: np.zeros(rows, [('a', np.uint8), ('b', '<f4')]),
      'empty': lambda: np.zeros((0, 28, 28), np.uint8),
      'empty_flat': lambda: np.zeros(0, np.uint8),
      'scalar': lambda: np.uint8(3),
      'wrong_rows': lambda: np.zeros((rows + 1, 28, 28), np.uint8),
      'wrong_pixels': lambda: np.zeros((rows, 28, 27), np.uint8),
      'rank1': lambda: np.zeros(rows, np.uint8),
      'rank4': lambda: np.zeros((rows, 28, 28, 1), np.uint8),
      'fortran': lambda: np.asfortranarray(np.full(shape, 9, np.uint8)),
  }[variant]()


def _label_array(variant: str, rows: int):
  """Labels of a given kind; the `_VALID_LABELS` kinds are valid."""
  digits = np.arange(rows) % 10
  return {
      'ok': lambda: digits.astype(np.uint8),
      'ok_int64': lambda: digits.astype(np.int64),
      'ok_uint64': lambda: digits.astype(np.uint64),
      'column': lambda: digits.astype(np.uint8).reshape(rows, 1),
      'ten': lambda: np.full(rows, 10, np.uint8),
      'negative': lambda: np.where(digits == 3, -1, digits).astype(np.int8),
      'byte_max': lambda: np.full(rows, 255, np.uint8),
      'wraps_to_digits': lambda: digits.astype(np.int64) + 2**32,
      'int64_min': lambda: np.full(rows, np.iinfo(np.int64).min),
      'uint64_max': lambda: np.full(rows, 2**64 - 1, np.uint64),
      'float': lambda: digits.astype(np.float32),
      'float_nan': lambda: np.full(rows, np.nan),
      'bool': lambda: digits.astype(bool),
      'object': lambda: np.array(list(digits), dtype=object),
      'evil_object': lambda: np.array(_evil_objects(), dtype=object),
      'str': lambda: digits.astype(str),
      'empty': lambda: np.zeros(0, np.uint8),
      'scalar': lambda: np.uint8(1),
      'wrong_rows': lambda: np.zeros(rows - 1, np.uint8),
      'matrix': lambda: np.zeros((rows, 2), np.uint8),
  }[variant]()


_VALID_IMAGES = ('ok', 'ok_flat', 'fortran', 'rank4')
_VALID_LABELS = ('ok', 'ok_int64', 'ok_uint64', 'column')
_KEYS = ('x_train', 'y_train', 'x_test', 'y_test')


def _array_variants(valid, all_variants):
  """Valid kinds a third of the time, so that files broken in one place only
  (the others valid) are common, and the shrinker lands on them."""
  return st.one_of(st.sampled_from(valid),
                   st.sampled_from(sorted(set(all_variants) - set(valid))),
                   st.just('missing'))


_IMAGE_VARIANTS = _array_variants(_VALID_IMAGES, [
    'ok', 'ok_flat', 'float32', 'float_nan', 'int64', 'int8', 'bool',
    'complex', 'object', 'evil_object', 'str', 'structured', 'empty',
    'empty_flat', 'scalar', 'wrong_rows', 'wrong_pixels', 'rank1', 'rank4',
    'fortran'])
_LABEL_VARIANTS = _array_variants(_VALID_LABELS, [
    'ok', 'ok_int64', 'ok_uint64', 'column', 'ten', 'negative', 'byte_max',
    'wraps_to_digits', 'int64_min', 'uint64_max', 'float', 'float_nan',
    'bool', 'object', 'evil_object', 'str', 'empty', 'scalar', 'wrong_rows',
    'matrix'])


@_settings(80)
@given(x_train=_IMAGE_VARIANTS, y_train=_LABEL_VARIANTS,
       x_test=_IMAGE_VARIANTS, y_test=_LABEL_VARIANTS,
       extra=st.booleans(), compressed=st.booleans())
@example(x_train='ok', y_train='wraps_to_digits', x_test='ok', y_test='ok',
         extra=False, compressed=False)
@example(x_train='empty', y_train='empty', x_test='ok', y_test='ok',
         extra=False, compressed=False)
@example(x_train='scalar', y_train='ok', x_test='ok', y_test='ok',
         extra=False, compressed=False)
@example(x_train='ok', y_train='ok', x_test='ok', y_test='ok',
         extra=True, compressed=True)
def test_npz_contents_are_valid_or_a_data_error(x_train, y_train, x_test,
                                                y_test, extra, compressed):
  variants = dict(x_train=x_train, y_train=y_train, x_test=x_test,
                  y_test=y_test)
  with _small_split(), _fresh_dir() as directory:
    rows = {'train': mnist.NUM_TRAIN, 'test': mnist.NUM_TEST}
    arrays = {}
    for key, variant in variants.items():
      if variant == 'missing':
        continue
      make = _image_array if key.startswith('x') else _label_array
      arrays[key] = make(variant, rows[key.split('_')[1]])
    if extra:
      arrays['x_valid'] = np.zeros(3)
    path = directory / 'mnist.npz'
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    valid = all(variants[k] in (_VALID_IMAGES if k.startswith('x')
                                else _VALID_LABELS) for k in _KEYS)
    event(f'valid: {valid}')
    if valid:
      _assert_valid_split(mnist.load_mnist(str(path)))
    else:
      _assert_data_error(path)
  _assert_nothing_executed()


# --------------------------------------------------------------------------
# IDX directories.


def _idx_bytes(array: np.ndarray, magic: int | None = None,
               dims: tuple[int, ...] | None = None) -> bytes:
  if magic is None:
    magic = 0x0803 if array.ndim == 3 else 0x0801
  dims = array.shape if dims is None else dims
  return (magic.to_bytes(4, 'big')
          + b''.join(int(d).to_bytes(4, 'big') for d in dims)
          + array.astype(np.uint8).tobytes())


def _valid_idx(key: str) -> bytes:
  rows = mnist.NUM_TRAIN if key.startswith('train') else mnist.NUM_TEST
  if key.endswith('_x'):
    return _idx_bytes(np.full((rows, 28, 28), 128, np.uint8))
  return _idx_bytes(np.arange(rows) % 10)


_IDX_VALID = ('ok', 'ok_gz', 'plain_and_gz')
# A flipped bit in the deflate stream's unused padding changes nothing.
_IDX_MAYBE_VALID = ('gz_flipped',)
_IDX_BROKEN = (
    'missing', 'empty', 'directory', 'truncated_header', 'truncated_data',
    'extra_bytes', 'bad_magic', 'signed_magic', 'swapped_kind', 'zero_rows',
    'overflowing_dims', 'huge_dims', 'wrong_dims', 'labels_too_big',
    'random', 'gz_truncated', 'gz_of_garbage', 'not_gz',
)


@st.composite
def _idx_file(draw, key: str):
  """(variant, {file name suffix: bytes or None for a directory})."""
  variant = draw(st.one_of(st.sampled_from(_IDX_VALID),
                           st.sampled_from(_IDX_BROKEN + _IDX_MAYBE_VALID)))
  good = _valid_idx(key)
  images = key.endswith('_x')
  rows = mnist.NUM_TRAIN if key.startswith('train') else mnist.NUM_TEST
  if variant == 'ok':
    return variant, {'': good}
  if variant == 'ok_gz':
    return variant, {'.gz': gzip.compress(good, mtime=0)}
  if variant == 'plain_and_gz':  # The plain file wins.
    return variant, {'': good, '.gz': b'not gzip'}
  if variant == 'missing':
    return variant, {}
  if variant == 'empty':
    return variant, {'': b''}
  if variant == 'directory':
    return variant, {'': None}
  if variant == 'truncated_header':
    return variant, {'': good[:draw(st.integers(0, 15 if images else 7))]}
  if variant == 'truncated_data':
    header = 16 if images else 8
    return variant, {'': good[:draw(st.integers(header, len(good) - 1))]}
  if variant == 'extra_bytes':
    return variant, {'': good + draw(st.binary(min_size=1, max_size=50))}
  if variant == 'bad_magic':
    magic = draw(st.integers(0, 2**32 - 1).filter(
        lambda m: m not in (0x0801, 0x0803)))
    return variant, {'': magic.to_bytes(4, 'big') + good[4:]}
  if variant == 'signed_magic':  # 0x08 is unsigned bytes; 0x09 is signed.
    return variant, {'': good[:2] + b'\x09' + good[3:]}
  if variant == 'swapped_kind':
    other = np.zeros(rows, np.uint8) if images else np.zeros((rows, 28, 28))
    return variant, {'': _idx_bytes(other)}
  if variant == 'zero_rows':
    shape = (0, 28, 28) if images else (0,)
    return variant, {'': _idx_bytes(np.zeros(shape, np.uint8))}
  if variant == 'overflowing_dims':  # The product wraps to 0 in int64.
    dims = (2**31, 2**31, 4) if images else (2**32 - 1,)
    magic = 0x0803 if images else 0x0801
    return variant, {'': _idx_bytes(np.zeros(0), magic, dims)}
  if variant == 'huge_dims':
    dims = tuple(draw(st.lists(st.integers(0, 2**32 - 1),
                               min_size=3 if images else 1,
                               max_size=3 if images else 1)))
    magic = 0x0803 if images else 0x0801
    length = draw(st.integers(0, 64))
    if length == math.prod(dims):  # Keep it inconsistent.
      length += 1
    return variant, {'': _idx_bytes(np.zeros(length), magic, dims)}
  if variant == 'wrong_dims':
    shape = (rows, 28, 27) if images else (rows + 1,)
    return variant, {'': _idx_bytes(np.zeros(shape, np.uint8))}
  if variant == 'labels_too_big':
    values = np.full((rows, 28, 28) if images else rows,
                     draw(st.integers(10, 255)))
    # For images any byte is valid: only labels can be too big.
    return ('ok', {'': _idx_bytes(values)}) if images else (
        variant, {'': _idx_bytes(values)})
  if variant == 'random':
    return variant, {'': draw(st.binary(max_size=100))}
  compressed = gzip.compress(good, mtime=0)
  if variant == 'gz_flipped':  # Past the 10-byte header: data or trailer.
    offset = draw(st.integers(10, len(compressed) - 1))
    damaged = bytearray(compressed)
    damaged[offset] ^= draw(st.integers(1, 255))
    return variant, {'.gz': bytes(damaged)}
  if variant == 'gz_truncated':
    return variant, {'.gz': compressed[:draw(st.integers(0, len(compressed)
                                                         - 1))]}
  if variant == 'gz_of_garbage':
    return variant, {'.gz': gzip.compress(draw(st.binary(max_size=40)))}
  assert variant == 'not_gz'
  return variant, {'.gz': draw(st.binary(max_size=40))}


@_settings(80)
@given(data=st.data())
@example(data=None)
def test_idx_directory_is_valid_or_a_data_error(data):
  with _small_split(), _fresh_dir() as directory:
    variants = {}
    for key, name in mnist.IDX_FILES.items():
      if data is None:  # Explicit example: the int64-overflowing header.
        variant, files = ('overflowing_dims', {'': _idx_bytes(
            np.zeros(0), 0x0803, (2**31, 2**31, 4))}) if key == 'train_x' \
            else ('ok', {'': _valid_idx(key)})
      else:
        variant, files = data.draw(_idx_file(key), label=key)
      variants[key] = variant
      for suffix, content in files.items():
        target = directory / (name + suffix)
        if content is None:
          target.mkdir()
        else:
          target.write_bytes(content)
    if any(v in _IDX_BROKEN for v in variants.values()):
      event('broken')
      _assert_data_error(directory)
    elif all(v in _IDX_VALID for v in variants.values()):
      event('valid')
      _assert_valid_split(mnist.load_mnist(str(directory)))
    else:
      event('maybe valid')
      try:
        arrays = mnist.load_mnist(str(directory))
      except errors.DataError as e:
        assert str(directory) in str(e) and '\n' not in str(e)
      else:
        _assert_valid_split(arrays)


# --------------------------------------------------------------------------
# Pickles: the packaged-data path and the restricted unpickler.

# pylint: disable-next=protected-access
_ALLOWED = sorted(mnist._ALLOWED_PICKLE_GLOBALS)
_FORBIDDEN = [
    ('os', 'system'), ('posix', 'system'), ('subprocess', 'call'),
    ('subprocess', 'Popen'), ('builtins', 'open'), ('builtins', 'exec'),
    ('builtins', 'eval'), ('builtins', 'getattr'), ('builtins', '__import__'),
    ('io', 'open'), ('pathlib', 'Path'), ('shutil', 'copy'),
    ('numpy', 'save'), ('numpy', 'load'), ('numpy', 'ndarray.tofile'),
    ('numpy.core.multiarray', 'scalar'),
    ('numpy.core.multiarray', '_reconstruct.__globals__'),
    ('numpy.core.multiarray ', '_reconstruct'), ('numpy', 'dtype\nos'),
    ('copyreg', '_reconstructor'), ('nt', 'system'),
]
_STRINGS = [f'touch {_MARKER}', _MARKER, 'w', 'f4', 'b', 'system',
            'numpy', 'ndarray', '_reconstruct', 'numpy.core.multiarray']


def _op_string(text: str) -> bytes:
  raw = text.encode('utf-8')
  return b'\x8c' + bytes([len(raw)]) + raw  # SHORT_BINUNICODE


_OPCODES = st.one_of(
    st.sampled_from(_ALLOWED + _FORBIDDEN).map(
        lambda g: b'c' + g[0].encode() + b'\n' + g[1].encode() + b'\n'),
    st.sampled_from(_ALLOWED + _FORBIDDEN).map(
        lambda g: _op_string(g[0]) + _op_string(g[1]) + b'\x93'),
    st.sampled_from(_STRINGS).map(_op_string),
    # Small ints only: as an ndarray's shape, big ones could allocate (and the
    # loader then fill) gigabytes.
    st.integers(0, 3).map(lambda i: b'K' + bytes([i])),
    st.sampled_from([
        b'(', b')', b't', b'\x85', b'\x86', b'\x87', b'R', b'b', b'\x81',
        b']', b'a', b'e', b'}', b's', b'\x94', b'h\x00', b'h\x01', b'0',
        b'2', b'N', b'\x88', b'\x89', b'.', b'\x80\x04', b'C\x03abc',
    ]),
)


@st.composite
def _pickle_programs(draw):
  """Random pickle opcode streams, mostly well-formed enough to run."""
  ops = draw(st.lists(_OPCODES, max_size=14))
  return b'\x80\x04' + b''.join(ops) + b'.'


@_settings(300)
@given(program=_pickle_programs())
@example(program=b'\x80\x04cos\nsystem\n'
         + _op_string(f'touch {_MARKER}') + b'\x85R.')
@example(program=_op_string('builtins') + _op_string('open') + b'\x93'
         + _op_string(_MARKER) + _op_string('w') + b'\x86R.')
def test_restricted_loads_never_runs_a_forbidden_global(program):
  try:
    mnist.restricted_loads(program)
  except pickle.UnpicklingError as e:
    event('forbidden global' if 'forbidden global' in str(e)
          else 'other UnpicklingError')
  except Exception:  # pylint: disable=broad-except
    # Malformed streams fail in many ways; what matters is that nothing ran.
    event('other error')
  else:
    event('loaded')
  _assert_nothing_executed()


def _nested(draw, leaf):
  """A random container structure with `leaf` somewhere inside."""
  depth = draw(st.integers(0, 3))
  value = leaf
  for _ in range(depth):
    kind = draw(st.sampled_from(['list', 'tuple', 'dict', 'pair']))
    filler = np.arange(draw(st.integers(0, 4)), dtype=np.float32)
    if kind == 'list':
      value = [filler, value] if draw(st.booleans()) else [value, filler]
    elif kind == 'tuple':
      value = (value, filler, 3)
    elif kind == 'dict':
      value = {'x': filler, 'y': value}
    else:
      value = ((filler, filler), (value, filler), (filler, filler))
  return value


@_settings(60)
@given(data=st.data(), protocol=st.integers(0, pickle.HIGHEST_PROTOCOL))
def test_restricted_loads_refuses_forbidden_globals_anywhere(data, protocol):
  evil = data.draw(st.sampled_from(_evil_objects()), label='evil')
  program = pickle.dumps(_nested(data.draw, evil), protocol=protocol)
  with pytest.raises(pickle.UnpicklingError, match='forbidden global'):
    mnist.restricted_loads(program)
  _assert_nothing_executed()


def _gzip_file(directory: pathlib.Path, content: bytes) -> pathlib.Path:
  path = directory / 'mnist.pkl.gz'
  path.write_bytes(gzip.compress(content, compresslevel=1))
  return path


@_settings(30)
@given(content=st.one_of(
    st.sampled_from(_evil_objects()).map(pickle.dumps),
    _pickle_programs(),
    st.binary(max_size=300),
))
def test_pickle_file_with_a_forbidden_global_or_garbage_is_a_data_error(
    content):
  with _fresh_dir() as directory:
    _assert_data_error(_gzip_file(directory, content))
    garbage = directory / 'raw.pkl.gz'  # Not even gzip.
    garbage.write_bytes(content)
    _assert_data_error(garbage)
  _assert_nothing_executed()


_PICKLED_SPLITS = st.one_of(
    st.sampled_from(_evil_objects()).map(
        lambda e: ((np.zeros(3), e), (np.zeros(3),) * 2, (np.zeros(3),) * 2)),
    st.sampled_from([
        None, 3, 'abc', (), ((1, 2), (3, 4), (5, 6)),
        ((np.zeros((2, 784)), np.zeros(2)),) * 3,
        ((np.zeros((2, 784)), np.zeros(3)),) * 3,
        ((np.zeros(0), np.zeros(0)),) * 3,
        ((np.zeros(()), np.zeros(())),) * 3,
        (([1.5], ['a']),) * 3,
        # Right shapes for `_small_split()` (50 + 10 train, 10 test), bad
        # values.
        ((np.full((50, 784), np.nan, np.float32), np.zeros(50, np.int64)),
         (np.zeros((10, 784), np.float32), np.zeros(10, np.int64)),
         (np.zeros((10, 784), np.float32), np.zeros(10, np.int64))),
        ((np.zeros((50, 784), np.float32), np.full(50, 2**32 + 1)),
         (np.zeros((10, 784), np.float32), np.zeros(10, np.int64)),
         (np.zeros((10, 784), np.float32), np.zeros(10, np.int64))),
        ((np.full((50, 784), 2.0), np.zeros(50, np.int64)),
         (np.zeros((10, 784)), np.zeros(10, np.int64)),
         (np.zeros((10, 784)), np.zeros(10, np.int64))),
    ]),
)


@_settings(40)
@given(content=st.one_of(
    _PICKLED_SPLITS.flatmap(lambda s: st.integers(0, 5).map(
        lambda p: pickle.dumps(s, protocol=p))),
    _pickle_programs(),
    st.binary(max_size=300),
))
def test_packaged_loader_past_the_hash_check_only_raises_data_error(content):
  # The pinned SHA-256 stops every file but the real one. Behind it, the
  # restricted unpickler and the shape checks must still hold on their own.
  with _small_split(), _fresh_dir() as directory, mock.patch.object(
      mnist, '_sha256', return_value=mnist.PACKAGED_SHA256):
    _assert_data_error(_gzip_file(directory, content), mnist.load_packaged)
  _assert_nothing_executed()


# --------------------------------------------------------------------------
# Partitions and synthetic regression data.

_ANY_FLOAT = st.one_of(
    st.floats(),
    st.floats(0, 2),
    st.sampled_from([0.0, -0.0, 1e-320, 1e-300, 1e-12, 1e-4, 1e-3, 0.01, 0.5,
                     1.0, 7.0, 1e3, 1e12, 1e300, math.inf, -math.inf,
                     math.nan]),
)
_ANY_INT = st.one_of(
    st.integers(-5, 60),
    st.sampled_from([-2**63, -1, 0, 1, 2**31 - 1, 2**31, 2**63, 10**30]),
)


def _mostly(usual, unusual):
  """Draws from `usual` three times in four, else from `unusual`.

  Each input is then often valid on its own, so that random combinations
  still reach the checks (and the code) behind the first bad value.
  """
  return st.integers(0, 3).flatmap(lambda i: usual if i else unusual)


@st.composite
def _labels(draw):
  """Label arrays of 0..400 examples, 1..12 classes, various int dtypes."""
  size = draw(st.integers(0, 400))
  num_labels = draw(st.integers(1, 12))
  values = draw(st.lists(st.integers(0, num_labels - 1), min_size=size,
                         max_size=size)) if size < 40 else (
      np.random.default_rng(draw(st.integers(0, 1000)))
      .integers(0, num_labels, size))
  dtype = draw(st.sampled_from([np.int64, np.int32, np.uint8]))
  return np.asarray(values, dtype=dtype).reshape(-1)


@_settings(250)
@given(name=st.sampled_from(partition.PARTITIONS.names()),
       labels=_labels(),
       num_clients=_mostly(st.integers(1, 30), _ANY_INT),
       seed=_mostly(st.integers(0, 2**64), _ANY_INT),
       shards_per_client=_mostly(st.integers(1, 5), _ANY_INT),
       dirichlet_alpha=_mostly(st.floats(1e-3, 1e4), _ANY_FLOAT),
       quantity_skew_exponent=_mostly(st.floats(0.05, 10), _ANY_FLOAT),
       min_examples_per_client=_mostly(st.integers(0, 5),
                                       st.integers(-3, 30)))
@example(name='dirichlet', labels=np.arange(10) % 3, num_clients=0, seed=0,
         shards_per_client=2, dirichlet_alpha=0.5, quantity_skew_exponent=1.5,
         min_examples_per_client=10)
@example(name='quantity_skew', labels=np.arange(10) % 3, num_clients=0,
         seed=0, shards_per_client=2, dirichlet_alpha=0.5,
         quantity_skew_exponent=1.5, min_examples_per_client=10)
@example(name='iid', labels=np.arange(10) % 3, num_clients=2, seed=-1,
         shards_per_client=2, dirichlet_alpha=0.5, quantity_skew_exponent=1.5,
         min_examples_per_client=10)
@example(name='dirichlet', labels=np.arange(100) % 3, num_clients=3, seed=0,
         shards_per_client=2, dirichlet_alpha=1e-300,
         quantity_skew_exponent=1.5, min_examples_per_client=0)
@example(name='quantity_skew', labels=np.arange(100) % 3, num_clients=3,
         seed=0, shards_per_client=2, dirichlet_alpha=0.5,
         quantity_skew_exponent=1e-5, min_examples_per_client=10)
def test_partition_is_exact_or_a_usage_error(
    name, labels, num_clients, seed, shards_per_client, dirichlet_alpha,
    quantity_skew_exponent, min_examples_per_client):
  params = partition.PartitionParams(
      shards_per_client=shards_per_client,
      dirichlet_alpha=dirichlet_alpha,
      quantity_skew_exponent=quantity_skew_exponent,
      min_examples_per_client=min_examples_per_client,
  )
  try:
    parts = partition.partition_indices(name, labels, num_clients, seed,
                                        params)
  except errors.UsageError as e:
    event(f'{name}: usage error')
    assert re.search(r'--[a-z_]+|exponent', str(e)), str(e)
    return
  event(f'{name}: partition')
  n = len(labels)
  assert len(parts) == num_clients
  everything = np.concatenate(parts)
  assert everything.dtype.kind in 'iu'
  np.testing.assert_array_equal(np.sort(everything), np.arange(n))
  assert all(np.all(np.diff(p) > 0) for p in parts)  # Sorted, no repeats.
  sizes = np.array([len(p) for p in parts])
  if name == 'iid':
    assert sizes.max() - sizes.min() <= 1
  elif name == 'shards':
    shard = n // (num_clients * shards_per_client)
    assert sizes.min() >= shards_per_client * shard
    assert sizes.max() <= shards_per_client * (shard + 1)
  else:
    minimum = min(min_examples_per_client, n // num_clients)
    if name == 'quantity_skew':
      minimum = max(minimum, 1)
    assert sizes.min() >= minimum


# Finite but huge values (1e300) overflow to inf in float32, with a warning.
@pytest.mark.filterwarnings('ignore::RuntimeWarning')
@_settings(150)
@given(num_clients=_mostly(st.integers(1, 25), st.integers(-2, 25)),
       examples_per_client=_mostly(st.integers(1, 40), st.integers(-2, 40)),
       num_features=_mostly(st.integers(1, 4), st.integers(-1, 4)),
       true_weights=_mostly(st.just(()), st.lists(_ANY_FLOAT, max_size=5)
                            .map(tuple)),
       true_bias=_mostly(st.floats(-10, 10), _ANY_FLOAT),
       noise_std=_mostly(st.floats(0, 10), _ANY_FLOAT),
       feature_shift=_mostly(st.floats(0, 10), _ANY_FLOAT),
       weight_heterogeneity=_mostly(st.floats(0, 10), _ANY_FLOAT),
       size_exponent=_mostly(st.floats(0, 10), _ANY_FLOAT),
       seed=_mostly(st.integers(0, 2**40), _ANY_INT))
@example(num_clients=10, examples_per_client=50, num_features=1,
         true_weights=(), true_bias=1.0, noise_std=math.inf, feature_shift=0.0,
         weight_heterogeneity=0.0, size_exponent=0.0, seed=0)
@example(num_clients=10, examples_per_client=50, num_features=1,
         true_weights=(), true_bias=1.0, noise_std=0.1, feature_shift=0.0,
         weight_heterogeneity=0.0, size_exponent=1e-5, seed=0)
@example(num_clients=10, examples_per_client=50, num_features=1,
         true_weights=(), true_bias=1.0, noise_std=0.1, feature_shift=0.0,
         weight_heterogeneity=0.0, size_exponent=0.0, seed=-1)
def test_regression_shards_are_valid_or_a_usage_error(
    num_clients, examples_per_client, num_features, true_weights, true_bias,
    noise_std, feature_shift, weight_heterogeneity, size_exponent, seed):
  spec = regression.RegressionSpec(
      num_clients=num_clients, examples_per_client=examples_per_client,
      num_features=num_features, true_weights=true_weights,
      true_bias=true_bias, noise_std=noise_std, feature_shift=feature_shift,
      weight_heterogeneity=weight_heterogeneity, size_exponent=size_exponent,
      seed=seed)
  try:
    shards = regression.make_regression_shards(spec)
  except errors.UsageError as e:
    event('usage error')
    assert re.search(r'--[a-z_]+|exponent', str(e)), str(e)
    return
  event('shards')
  n = num_clients * examples_per_client
  assert shards.x.shape == (n, num_features) and shards.y.shape == (n, 1)
  sizes = np.bincount(shards.client_ids, minlength=num_clients)
  assert len(sizes) == num_clients and sizes.min() >= 1
  assert np.all(np.diff(shards.client_ids) >= 0)
  moderate = [true_bias, noise_std, feature_shift, weight_heterogeneity,
              *true_weights]
  if all(abs(v) <= 1e6 for v in moderate):
    assert np.all(np.isfinite(shards.x)) and np.all(np.isfinite(shards.y))


# --------------------------------------------------------------------------
# Typed configs.

_NAMES = st.one_of(
    st.sampled_from(['run', 'a.b-c_d', '.', '..', '...', '', 'a/b', '../x',
                     '-', 'ünï', 'a b', 'x' * 300]),
    st.text(max_size=12),
)


@dataclasses.dataclass(frozen=True)
class _Build:
  """A config to construct inside the test: construction validates it."""

  cls: type
  kwargs: dict

  def __call__(self):
    return self.cls(**{k: v() if isinstance(v, _Build) else v
                       for k, v in self.kwargs.items()})


def _aggregation_configs():
  """AggregationConfigs with random values in every field, by type."""
  by_type = {'bool': st.booleans(), 'float': _ANY_FLOAT, 'int': _ANY_INT}
  return st.fixed_dictionaries({
      f.name: by_type[f.type]
      for f in dataclasses.fields(config_lib.AggregationConfig)
      if f.type in by_type}).map(
          lambda kwargs: _Build(config_lib.AggregationConfig, kwargs))


@st.composite
def _training_configs(draw):
  def optimizer(role):
    return _Build(config_lib.OptimizerConfig, dict(
        name=draw(st.sampled_from(['sgd', 'adam', 'nope'])),
        learning_rate=draw(_ANY_FLOAT), momentum=draw(_ANY_FLOAT),
        epsilon=draw(_ANY_FLOAT), role=role))

  aggregation = draw(_aggregation_configs())
  heterogeneity = _Build(heterogeneity_lib.ComputeHeterogeneity, dict(
      straggler_fraction=draw(_ANY_FLOAT),
      straggler_budget=draw(st.sampled_from(
          list(heterogeneity_lib.STRAGGLER_BUDGETS) + ['never', ''])),
      straggler_min_steps=draw(_ANY_INT), straggler_max_steps=draw(_ANY_INT),
      capacity_profile=draw(st.sampled_from(
          heterogeneity_lib.CAPACITY_PROFILES.names() + ['gaussian', ''])),
      min_capacity=draw(_ANY_FLOAT)))
  faults = _Build(faults_lib.FaultInjection, dict(
      fraction=draw(_ANY_FLOAT),
      mode=draw(st.sampled_from(faults_lib.FAULT_MODES.names() + ['evil']))))
  return _Build(config_lib.TrainingConfig, dict(
      experiment_name=draw(_NAMES),
      root_output_dir=draw(st.sampled_from(['/tmp/x', '', 'relative/dir'])),
      total_rounds=draw(_ANY_INT), clients_per_round=draw(_ANY_INT),
      client_epochs_per_round=draw(_ANY_INT),
      client_batch_size=draw(_ANY_INT),
      client_optimizer=optimizer('client'),
      server_optimizer=optimizer('server'),
      rounds_per_eval=draw(_ANY_INT), rounds_per_checkpoint=draw(_ANY_INT),
      seed=draw(_ANY_INT), heterogeneity=heterogeneity,
      aggregation=aggregation, proximal_strength=draw(_ANY_FLOAT),
      faults=faults,
  ))


_GOOD_CONFIG = config_lib.TrainingConfig(experiment_name='x',
                                         root_output_dir='/tmp/x')


def _replaced(default, **changes) -> _Build:
  """`default`'s fields, some replaced, built when the test calls it."""
  return _Build(type(default), {
      **{f.name: getattr(default, f.name)
         for f in dataclasses.fields(default)},
      **changes})


def _nearly(draw, default, random_configs, max_changed: int):
  """`default` with 1..max_changed fields taken from a random config."""
  full = draw(random_configs)
  names = draw(st.lists(st.sampled_from(
      [f.name for f in dataclasses.fields(default)]),
      min_size=1, max_size=max_changed, unique=True))
  return _replaced(default, **{n: full.kwargs.get(n, getattr(default, n))
                               for n in names})


@st.composite
def _nearly_valid_configs(draw):
  """The defaults with one to three fields replaced by random values."""
  return _nearly(draw, _GOOD_CONFIG, _training_configs(), 3)


def _assert_config_facts(c: config_lib.TrainingConfig, num_clients) -> None:
  """What a config that passed `validate` guarantees."""
  assert re.fullmatch(r'[A-Za-z0-9._-]+', c.experiment_name)
  assert c.experiment_name not in ('.', '..')
  assert c.root_output_dir
  for value in (c.total_rounds, c.clients_per_round,
                c.client_epochs_per_round, c.rounds_per_eval,
                c.rounds_per_checkpoint):
    assert value >= 1
  if num_clients is not None:
    assert 1 <= c.clients_per_round <= num_clients
  assert c.client_batch_size >= 1 or c.client_batch_size == -1
  assert 0 <= c.seed < 2**31
  for optimizer in (c.client_optimizer, c.server_optimizer):
    assert math.isfinite(optimizer.learning_rate)
    assert optimizer.learning_rate > 0
    assert 0 <= optimizer.momentum < 1
    assert math.isfinite(optimizer.epsilon) and optimizer.epsilon > 0
  a = c.aggregation
  assert 0 <= a.trim_fraction < 0.5 and 0 <= a.dp_delta < 1
  assert math.isfinite(a.dp_clip_norm) and a.dp_clip_norm > 0
  assert math.isfinite(a.dp_noise_multiplier) and a.dp_noise_multiplier >= 0
  assert math.isfinite(a.clip_norm) and a.clip_norm >= 0
  assert 1 <= a.compression_bits <= 16
  assert sum([a.dp, a.secure_aggregation, a.compression]) <= 1
  assert 0 <= c.faults.fraction <= 1
  assert 0 <= c.heterogeneity.straggler_fraction <= 1
  assert 0 < c.heterogeneity.min_capacity <= 1
  assert math.isfinite(c.proximal_strength) and c.proximal_strength >= 0


# Configs are validated at construction: the strategies give `_Build`s, which
# the tests construct (and validate against `num_clients`).
@_settings(300)
@given(c=st.one_of(_training_configs(), _nearly_valid_configs()),
       num_clients=st.one_of(st.none(), _ANY_INT))
@example(c=_replaced(_GOOD_CONFIG, experiment_name='..'), num_clients=10)
@example(c=_replaced(
    _GOOD_CONFIG,
    client_optimizer=_Build(config_lib.OptimizerConfig,
                            {'learning_rate': 10**400})),
         num_clients=10)
def test_training_config_is_valid_or_a_usage_error_naming_a_flag(
    c, num_clients):
  try:
    config = c()
    config.validate(num_clients=num_clients)
  except errors.UsageError as e:
    event('usage error')
    assert re.search(r'--[a-z_]+', str(e)), str(e)
  else:
    event('valid')
    _assert_config_facts(config, num_clients)


@st.composite
def _nearly_default_aggregation_configs(draw):
  """The defaults with one or two fields replaced by random values."""
  return _nearly(draw, config_lib.AggregationConfig(), _aggregation_configs(),
                 2)


@_settings(200)
@given(c=st.one_of(_aggregation_configs(),
                   _nearly_default_aggregation_configs()))
@example(c=_Build(config_lib.AggregationConfig, {'compensation_q': 10**400}))
def test_aggregation_config_is_valid_or_a_usage_error_naming_a_flag(c):
  try:
    config = c()
  except errors.UsageError as e:
    event('usage error')
    assert re.search(r'--[a-z_]+', str(e)), str(e)
  else:
    event('valid')
    _assert_config_facts(dataclasses.replace(_GOOD_CONFIG, aggregation=config),
                         None)


# --------------------------------------------------------------------------
# The binary: random flags, via subprocess.

MODULE = 'experiments.train_mnist'
# Small enough that a valid combination finishes in about 15 s.
BASE_FLAGS = ['--model=2nn', '--num_clients=20', '--clients_per_round=1',
              '--client_batch_size=1000', '--total_rounds=1',
              '--progress=false']
NAME = 'fuzz'
TIMEOUT = 120  # A hang fails the example.

# flag: (valid values, invalid values). Valid values keep a run short.
_FLAG_VALUES = {
    'clients_per_round': (['1', '2'], ['0', '-1', '21', '1000000', '1.5']),
    'num_clients': (['20', '100', '600'],
                    ['0', '-5', '60001', '1000000000000', '2e3']),
    'total_rounds': (['1', '2'], ['0', '-1', '99999999999999999999999']),
    'client_batch_size': (['-1', '1000', '100000'], ['0', '-2', '1e3']),
    'client_learning_rate': (['0.1', '0.05', '1e-3'],
                             ['0', '-1', 'nan', 'inf', '1e400', '1e300']),
    'partition': (partition.PARTITIONS.names(), ['stripes', 'IID', 'iid ']),
    'dirichlet_alpha': (['0.5', '10', '1e6', '0.001'],
                        ['0', '-1', 'nan', 'inf', '1e-300', '1e-9', '0.0009']),
    'shards_per_client': (['1', '2', '5'], ['0', '-3', '1000000000']),
    'quantity_skew_exponent': (['1.5', '0.5'], ['0', '-2', 'nan', '1e-9']),
    'model': (['2nn', 'cnn'], ['vgg', '2NN', '']),
    'aggregator': (['mean', 'median', 'trimmed_mean', 'compensated'],
                   ['sum', 'krum']),
    # '-0' is a valid 0, but -0.0 is not always 0 (NumPy refuses scale=-0.0).
    'trim_fraction': (['0', '-0', '0.2', '0.49'],
                      ['0.5', '-0.1', 'nan', 'inf']),
    'dp_noise_multiplier': (['0', '-0', '0.1'], ['-1', 'nan', 'inf']),
    'faulty_client_fraction': (['0', '-0', '0.5', '1'],
                               ['1.5', '-0.1', 'nan']),
    'straggler_fraction': (['0', '-0', '0.5', '1'], ['2', '-1', 'nan']),
    'seed': (['0', '7', '2147483647'],
             ['-1', '2147483648', '100000000000000000000000']),
    'experiment_name': ([NAME], ['..', '.', 'a/b', '', 'x y', '../escape']),
    'mnist_path': ([''], ['{garbage_npz}', '{empty_dir}', '{bad_idx}',
                          '{evil_pkl}', '{fifo}', '/no/such/mnist.npz',
                          '{wrong_keys_npz}']),
}


def _junk():
  """Arbitrary strings: no NUL (argv cannot hold one), no surrogates."""
  return st.text(
      st.characters(blacklist_categories=('Cs',), blacklist_characters='\0'),
      max_size=12)


@st.composite
def _flag_args(draw, min_bad: int = 0):
  """A random subset of flags, each with a valid, invalid or junk value.

  Args:
    draw: Hypothesis' draw function.
    min_bad: The first `min_bad` flags get invalid or junk values, so the
      run fails after the ~5 s of imports instead of training for ~15 s.
  """
  names = draw(st.lists(st.sampled_from(sorted(_FLAG_VALUES)), unique=True,
                        min_size=min_bad, max_size=5))
  args = []
  for position, name in enumerate(names):
    valid, invalid = _FLAG_VALUES[name]
    # Shrinks towards valid values.
    kind = draw(st.integers(6 if position < min_bad else 0, 9))
    if kind <= 5:
      value = draw(st.sampled_from(valid))
    elif kind <= 8:
      value = draw(st.sampled_from(invalid))
    else:
      value = draw(_junk())
    args.append(f'--{name}={value}')
  return args


@pytest.fixture(scope='module')
def hostile_files(tmp_path_factory):
  """Paths for --mnist_path that are not MNIST."""
  root = tmp_path_factory.mktemp('hostile')
  garbage = root / 'garbage.npz'
  garbage.write_bytes(b'PK\x03\x04' + bytes(range(256)) * 4)
  (root / 'empty_dir').mkdir()
  bad_idx = root / 'bad_idx'
  bad_idx.mkdir()
  for name in mnist.IDX_FILES.values():
    (bad_idx / name).write_bytes(b'\x00\x00\x08\x03' + b'\xff' * 12)
  evil = root / 'mnist.pkl.gz'
  with gzip.open(evil, 'wb') as f:
    f.write(pickle.dumps(_EvilReduce(os.system, f'touch {_MARKER}')))
  fifo = root / 'fifo.npz'
  os.mkfifo(fifo)
  wrong_keys = root / 'wrong_keys.npz'
  np.savez(wrong_keys, a=np.zeros(3))
  return {'garbage_npz': garbage, 'empty_dir': root / 'empty_dir',
          'bad_idx': bad_idx, 'evil_pkl': evil, 'fifo': fifo,
          'wrong_keys_npz': wrong_keys}


def _csv_rounds(path: pathlib.Path) -> list[str]:
  with open(path, newline='') as f:
    return [row['round_num'] for row in csv.DictReader(f)]


@pytest.fixture(scope='module')
def earlier_run(tmp_path_factory):
  """The output tree of a successful run named NAME (copy before use)."""
  root = tmp_path_factory.mktemp('earlier')
  done = helpers.run_binary(MODULE, f'--experiment_name={NAME}',
                            f'--root_output_dir={root}', *BASE_FLAGS,
                            timeout=TIMEOUT)
  assert done.returncode == 0, done.stderr
  results = root / 'results' / NAME
  assert json.loads((results / 'summary.json').read_text())[
      'status'] == 'completed'
  assert _csv_rounds(results / 'experiment.metrics.csv') == ['1']
  return root


def _our_workers(pids: set[int], run_id: str) -> set[int]:
  """The worker processes among `pids` started by the run `run_id`.

  Other sessions may start TFF workers at the same time; ours inherit the
  binary's environment, which carries `run_id`.
  """
  ours = set()
  for pid in pids:
    try:
      with open(f'/proc/{pid}/environ', 'rb') as f:
        environ = f.read().split(b'\0')
    except OSError:  # Already gone.
      continue
    if f'TFF_FUZZ_RUN={run_id}'.encode() in environ:
      ours.add(pid)
  return ours


def _snapshot(directory: pathlib.Path) -> dict[str, bytes]:
  """Every file under `directory`, by relative path, with its content."""
  return {str(p.relative_to(directory)): p.read_bytes()
          for p in sorted(directory.rglob('*')) if p.is_file()}


def _run_fuzzed_binary(args: list[str], reuse_earlier_run: bool,
                       hostile_files, earlier_run) -> None:
  """Runs the binary with `args`; checks the outcome is clean either way."""
  def resolve(arg):
    flag, value = arg.split('=', 1)
    if value.startswith('{') and value[1:-1] in hostile_files:
      return f'{flag}={hostile_files[value[1:-1]]}'
    return arg

  args = [resolve(a) for a in args]
  base = pathlib.Path(tempfile.mkdtemp(prefix='tff_fuzz_bin_'))
  try:
    root = base / 'out'
    if reuse_earlier_run:
      shutil.copytree(earlier_run, root)
    results = root / 'results' / NAME
    earlier = {d: _snapshot(root / d / NAME)
               for d in ('results', 'checkpoints')} if reuse_earlier_run else {}
    before = helpers.worker_binary_pids()
    run_id = base.name
    with mock.patch.dict(os.environ, {'TFF_FUZZ_RUN': run_id}):
      done = helpers.run_binary(MODULE, f'--experiment_name={NAME}',
                                f'--root_output_dir={root}', *BASE_FLAGS,
                                *args, timeout=TIMEOUT)
    leaked = _our_workers(helpers.worker_binary_pids() - before, run_id)
    event(f'exit {done.returncode}')
    report = f'args {args}\nexit {done.returncode}\nstderr:\n{done.stderr}'
    assert not leaked, report
    assert 'Traceback' not in done.stderr, report
    name = next((a.split('=', 1)[1] for a in reversed(args)
                 if a.startswith('--experiment_name=')), NAME)
    if done.returncode == 0:
      summary = json.loads(
          (root / 'results' / name / 'summary.json').read_text())
      assert summary['status'] == 'completed', report
    else:
      assert done.returncode > 0, report  # Not killed by a signal.
      lines = done.stderr.splitlines()
      errors_lines = [l for l in lines if l.startswith('error:')]
      assert len(errors_lines) == 1, report
      # The message is one line: nothing of it spills onto later lines.
      assert lines[-1] == errors_lines[0], report
    _assert_nothing_executed()
    if reuse_earlier_run:
      # The earlier run's outputs are intact, whatever this run did.
      summary = json.loads((results / 'summary.json').read_text())
      assert summary['rounds_completed'] >= 1, report
      if done.returncode != 0:
        assert summary['status'] == 'completed', report
      assert _csv_rounds(results / 'experiment.metrics.csv')[:1] == ['1'], (
          report)
      if done.returncode == errors.UsageError.exit_code:
        # Bad flags, data or checkpoints are refused before anything is
        # written: not one byte of the earlier run changed.
        for d, files in earlier.items():
          assert _snapshot(root / d / NAME) == files, report
  finally:
    shutil.rmtree(base, ignore_errors=True)


@_settings(4)
@given(args=_flag_args(min_bad=1), reuse_earlier_run=st.booleans())
# Refused late, after the output directories exist: changed flags on resume
# (CheckpointError) and a corrupt --mnist_path (DataError).
@example(args=['--seed=5'], reuse_earlier_run=True)
@example(args=['--mnist_path={garbage_npz}'], reuse_earlier_run=True)
def test_binary_flags_fuzz(args, reuse_earlier_run, hostile_files,
                           earlier_run):
  _run_fuzzed_binary(args, reuse_earlier_run, hostile_files, earlier_run)


@pytest.mark.slow
@pytest.mark.timeout(3600)
@_settings(60)
@given(args=_flag_args(), reuse_earlier_run=st.booleans())
def test_binary_flags_fuzz_many(args, reuse_earlier_run, hostile_files,
                                earlier_run):
  _run_fuzzed_binary(args, reuse_earlier_run, hostile_files, earlier_run)
