"""Hostile input for the MNIST loaders: random bytes, damaged Keras .npz
files, IDX directories and pickles, and the restricted unpickler.

Every file is either loaded as a valid split or refused with a one-line
`DataError` naming it; no pickle ever runs a global outside the allow-list.
See tests/fuzzing.py.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import io
import math
import pathlib
import pickle
import tempfile
import zipfile
from unittest import mock

import numpy as np
import pytest
from hypothesis import event
from hypothesis import example
from hypothesis import given
from hypothesis import strategies as st

from tests import fuzzing
from tff_pipeline import errors
from tff_pipeline.data import mnist


pytestmark = pytest.mark.usefixtures('pickle_marker')


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


@fuzzing.deterministic(60)
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


@fuzzing.deterministic(40)
@given(fraction=st.floats(0, 1, exclude_max=True))
@example(fraction=0.0)
def test_truncated_npz_is_a_data_error(fraction):
  content = _valid_npz()
  with _fresh_dir() as directory:
    path = directory / 'mnist.npz'
    path.write_bytes(content[:int(fraction * len(content))])
    _assert_data_error(path)


@fuzzing.deterministic(40)
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
      'evil_object': lambda: np.array(fuzzing.evil_objects(), dtype=object),
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
      'evil_object': lambda: np.array(fuzzing.evil_objects(), dtype=object),
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


@fuzzing.deterministic(80)
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
  fuzzing.assert_nothing_executed()


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


@fuzzing.deterministic(80)
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
_STRINGS = [f'touch {fuzzing.MARKER}', fuzzing.MARKER, 'w', 'f4', 'b', 'system',
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


@fuzzing.deterministic(300)
@given(program=_pickle_programs())
@example(program=b'\x80\x04cos\nsystem\n'
         + _op_string(f'touch {fuzzing.MARKER}') + b'\x85R.')
@example(program=_op_string('builtins') + _op_string('open') + b'\x93'
         + _op_string(fuzzing.MARKER) + _op_string('w') + b'\x86R.')
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
  fuzzing.assert_nothing_executed()


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


@fuzzing.deterministic(60)
@given(data=st.data(), protocol=st.integers(0, pickle.HIGHEST_PROTOCOL))
def test_restricted_loads_refuses_forbidden_globals_anywhere(data, protocol):
  evil = data.draw(st.sampled_from(fuzzing.evil_objects()), label='evil')
  program = pickle.dumps(_nested(data.draw, evil), protocol=protocol)
  with pytest.raises(pickle.UnpicklingError, match='forbidden global'):
    mnist.restricted_loads(program)
  fuzzing.assert_nothing_executed()


def _gzip_file(directory: pathlib.Path, content: bytes) -> pathlib.Path:
  path = directory / 'mnist.pkl.gz'
  path.write_bytes(gzip.compress(content, compresslevel=1))
  return path


@fuzzing.deterministic(30)
@given(content=st.one_of(
    st.sampled_from(fuzzing.evil_objects()).map(pickle.dumps),
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
  fuzzing.assert_nothing_executed()


_PICKLED_SPLITS = st.one_of(
    st.sampled_from(fuzzing.evil_objects()).map(
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


@fuzzing.deterministic(40)
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
  fuzzing.assert_nothing_executed()
