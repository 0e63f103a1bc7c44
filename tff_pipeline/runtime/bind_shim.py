"""Builds the LD_PRELOAD shim that pins `worker_binary` to one address.

TFF's `worker_binary` has no flag for its listening address; its gRPC server
binds `[::]:PORT`, every interface. It is dynamically linked against glibc and
imports `bind` from it, so a preloaded library can interpose `bind()` and
rewrite the wildcard address. `bind_shim.c` (next to this file) is that
library; it reads the target address from `TFF_PIPELINE_BIND_ADDRESS` (see
the comment at the top of the C file for the exact rules).

No binary is shipped: `ensure_built()` compiles the shim with the system C
compiler on first use, into the virtualenv's `lib/` directory (or the user's
cache directory when that is not writable), and rebuilds it when the source
or the compiler flags change.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile

from absl import logging

ENV_VAR = 'TFF_PIPELINE_BIND_ADDRESS'
LIBRARY_NAME = 'tff_pipeline_bind_shim.so'
SOURCE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                           'bind_shim.c')
_CFLAGS = ('-shared', '-fPIC', '-O2', '-Wall')
_LIBS = ('-ldl',)


def _source_hash() -> str:
  digest = hashlib.sha256()
  with open(SOURCE_PATH, 'rb') as f:
    digest.update(f.read())
  digest.update(' '.join(_CFLAGS + _LIBS).encode())
  return digest.hexdigest()


def _find_compiler() -> list[str] | None:
  """The C compiler command: $CC if set, else cc, gcc or clang on PATH."""
  if os.environ.get('CC'):
    command = shlex.split(os.environ['CC'])
    return command if command and shutil.which(command[0]) else None
  for name in ('cc', 'gcc', 'clang'):
    path = shutil.which(name)
    if path:
      return [path]
  return None


def _usable_dir(path: str) -> bool:
  """Whether `path` exists or can be made, is writable, and fits LD_PRELOAD."""
  # LD_PRELOAD splits on spaces and colons and has no quoting.
  if ' ' in path or ':' in path:
    return False
  try:
    os.makedirs(path, exist_ok=True)
  except OSError:
    return False
  return os.access(path, os.W_OK | os.X_OK)


def default_output_dir() -> str | None:
  """Where the shim is built: `<venv>/lib`, else `~/.cache/tff_pipeline`.

  Returns None when neither is writable or usable in LD_PRELOAD.
  """
  candidates = []
  if sys.prefix != sys.base_prefix:
    candidates.append(os.path.join(sys.prefix, 'lib'))
  cache = os.environ.get('XDG_CACHE_HOME') or os.path.join(
      os.path.expanduser('~'), '.cache')
  candidates.append(os.path.join(cache, 'tff_pipeline'))
  for candidate in candidates:
    if _usable_dir(candidate):
      return candidate
  return None


def ensure_built(output_dir: str | None = None) -> str | None:
  """Returns the path of the compiled shim, compiling it if needed.

  The library is rebuilt when it is missing or when `bind_shim.c` or the
  compiler flags changed since it was built (a `.sha256` file beside it
  records the hash it was built from). Concurrent builds are safe: each
  compiles to a temporary file and renames it into place.

  Args:
    output_dir: Directory for the library; `default_output_dir()` when None.

  Returns:
    The absolute path of the shared library, or None (with a logged warning)
    when it cannot be built: not Linux, no C compiler, the compiler failed,
    or no usable directory.
  """
  if not sys.platform.startswith('linux'):
    logging.warning('bind shim: LD_PRELOAD interposition is supported on '
                    'Linux only, not %s', sys.platform)
    return None
  output_dir = output_dir or default_output_dir()
  if output_dir is None or not _usable_dir(output_dir):
    logging.warning('bind shim: no writable directory without spaces or '
                    'colons to build %s in', LIBRARY_NAME)
    return None
  library = os.path.abspath(os.path.join(output_dir, LIBRARY_NAME))
  stamp = library + '.sha256'
  wanted = _source_hash()
  try:
    with open(stamp) as f:
      if f.read().strip() == wanted and os.path.isfile(library):
        return library
  except OSError:
    pass
  compiler = _find_compiler()
  if compiler is None:
    logging.warning('bind shim: no C compiler found (set CC, or install cc, '
                    'gcc or clang); cannot build %s', library)
    return None
  temporaries = []
  try:
    fd, tmp = tempfile.mkstemp(prefix='.' + LIBRARY_NAME, dir=output_dir)
    os.close(fd)
    temporaries.append(tmp)
    command = [*compiler, *_CFLAGS, '-o', tmp, SOURCE_PATH, *_LIBS]
    result = subprocess.run(command, capture_output=True, text=True,
                            timeout=120, check=False)
    if result.returncode != 0:
      logging.warning('bind shim: %s failed (exit %d): %s',
                      shlex.join(command), result.returncode,
                      result.stderr.strip()[-2000:])
      return None
    os.chmod(tmp, 0o755)
    os.replace(tmp, library)
    fd, tmp_stamp = tempfile.mkstemp(prefix='.' + LIBRARY_NAME, dir=output_dir)
    temporaries.append(tmp_stamp)
    with os.fdopen(fd, 'w') as f:
      f.write(wanted + '\n')
    os.chmod(tmp_stamp, 0o644)
    os.replace(tmp_stamp, stamp)
  except (OSError, subprocess.SubprocessError) as e:
    logging.warning('bind shim: cannot build %s: %s', library, e)
    return None
  finally:
    for path in temporaries:
      if os.path.exists(path):
        os.unlink(path)
  return library
