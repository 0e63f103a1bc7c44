"""Runs one binary's command lines in one long-lived Python process.

`python -m tests.binary_driver experiments.train_mnist` imports the binary
once (TensorFlow, TFF, the packaged MNIST: about 5 s of every `python -m`
run) and then answers requests on stdin, one JSON object a line:

  {"argv": ["--experiment_name=x", ...], "env": {"NAME": "value"}}

For each it runs exactly what `python -m <module> <argv>` runs after the
imports, `cli.run_main(module.main)` with `sys.argv` set, its flags reset to
their defaults first, `env` added to `os.environ` for the run (so the TFF
workers it starts inherit it), and file descriptors 1 and 2 captured (so
C++ and absl output is caught too, as a subprocess' pipes would catch it).
It answers one JSON line on its own stdout:

  {"returncode": 0, "stdout": "...", "stderr": "..."}

with the exit code the interpreter would have exited with (`sys.exit`'s
code, 1 and a traceback on stderr for an uncaught exception). Used through
`tests.helpers.run_binary_in_process`.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
import tempfile
import traceback
from collections.abc import Iterator
from unittest import mock

from absl import flags

from tff_pipeline import cli


def _exit_code(code: object) -> int:
  """The process exit status `sys.exit(code)` gives, as the interpreter does."""
  if code is None:
    return 0
  if isinstance(code, int):
    return code & 0xFF
  print(code, file=sys.stderr)
  return 1


@contextlib.contextmanager
def _captured_output() -> Iterator[dict[str, str]]:
  """Sends fds 1 and 2 to temporary files; fills the dict on exit."""
  captured: dict[str, str] = {}
  sys.stdout.flush()
  sys.stderr.flush()
  saved = {fd: os.dup(fd) for fd in (1, 2)}
  with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
    files = {1: out, 2: err}
    for fd, file in files.items():
      os.dup2(file.fileno(), fd)
    try:
      yield captured
    finally:
      sys.stdout.flush()
      sys.stderr.flush()
      for fd, copy in saved.items():
        os.dup2(copy, fd)
        os.close(copy)
      for fd, name in ((1, 'stdout'), (2, 'stderr')):
        files[fd].seek(0)
        captured[name] = files[fd].read().decode('utf-8', 'replace')


def _run(module, argv: list[str], env: dict[str, str]) -> dict[str, object]:
  program = module.__name__.rsplit('.', 1)[-1]
  with _captured_output() as captured, \
      mock.patch.dict(os.environ, env), \
      mock.patch.object(sys, 'argv', [program, *argv]):
    flags.FLAGS.unparse_flags()
    try:
      cli.run_main(module.main)
      returncode = 0
    except SystemExit as e:
      returncode = _exit_code(e.code)
    except BaseException:  # pylint: disable=broad-except
      traceback.print_exc()
      returncode = 1
  return {'returncode': returncode, **captured}


def main() -> None:
  module = importlib.import_module(sys.argv[1])
  # Our answers go to the real stdout; each run's output is captured apart.
  answers = os.fdopen(os.dup(1), 'w', encoding='utf-8')
  print(json.dumps({'ready': True}), file=answers, flush=True)
  for line in sys.stdin:
    request = json.loads(line)
    answer = _run(module, request['argv'], request.get('env', {}))
    print(json.dumps(answer), file=answers, flush=True)


if __name__ == '__main__':
  main()
