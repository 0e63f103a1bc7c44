"""Running absl binaries with one-line errors and no leaked workers.

`run_main(main)` replaces `absl.app.run(main)`:
  * a bad flag value prints `error: <absl's message>` and exits 2;
  * a `PipelineError` from `main` prints `error: <message>` and exits with
    the error's code, with no traceback;
  * Ctrl-C / SIGTERM print how to resume and exit 130;
  * on every path, TFF worker processes started by this process are stopped.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from absl import app
from absl import flags
from absl import logging

from tff_pipeline import errors
from tff_pipeline.runtime import workers


# The --flagfile paths given on the command line, in order. absl expands them
# without keeping their names; the binaries name runs after the last one.
FLAGFILES: list[str] = []

# Characters that end a line for str.splitlines() or a terminal. A flag value
# may hold them; escaped, the error message stays on its one line.
_LINE_BREAKS = str.maketrans(
    {c: repr(c)[1:-1] for c in '\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029'})


def _one_line(message: object) -> str:
  """`message` as a string, its line breaks escaped (\\n, \\x85, ...)."""
  return str(message).translate(_LINE_BREAKS)


def _parse_flags(argv: Sequence[str]) -> list[str]:
  FLAGFILES[:] = [
      arg.split('=', 1)[1] for arg in argv[1:]
      if arg.startswith(('--flagfile=', '-flagfile='))
  ]
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f'error: {_one_line(e)}', file=sys.stderr)
    sys.exit(errors.UsageError.exit_code)


def reject_positional_arguments(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise errors.UsageError(
        f'unexpected positional arguments {list(argv[1:])}; all settings are '
        'flags (--name=value), see --help'
    )


def _guarded(main: Callable[[list[str]], None]) -> Callable[[list[str]], None]:
  def guarded_main(argv: list[str]) -> None:
    # TFF's program managers log every save at INFO; keep the console for
    # the progress bar and for what needs the user's attention.
    logging.set_verbosity(logging.WARNING)
    try:
      reject_positional_arguments(argv)
      main(argv)
    except errors.PipelineError as e:
      print(f'error: {_one_line(e)}', file=sys.stderr, flush=True)
      sys.exit(e.exit_code)
    except KeyboardInterrupt:
      print('error: interrupted; run the same command again to resume',
            file=sys.stderr, flush=True)
      sys.exit(errors.Interrupted.exit_code)
    finally:
      workers.stop_all_workers()

  return guarded_main


def run_main(main: Callable[[list[str]], None]) -> None:
  """Parses flags and runs `main` with the error handling described above."""
  app.run(_guarded(main), flags_parser=_parse_flags)
