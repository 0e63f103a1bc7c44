"""Signal handling that lets `finally` blocks stop workers and save work.

Python's default SIGTERM action kills the interpreter without running
`finally` blocks or `atexit` hooks, which would leak the TFF worker and lose
the round in flight. Inside `raise_on_termination_signals()`, the first
SIGINT or SIGTERM raises `errors.Interrupted` in the main thread, so the
training loop can save what it has and the runtime can stop its workers. A
second signal while that clean-up runs stops the workers at once and exits.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator

from tff_pipeline import errors
from tff_pipeline.runtime import workers

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def raise_on_termination_signals() -> Iterator[None]:
  """Within the block, SIGINT/SIGTERM raise `errors.Interrupted`."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  received: list[int] = []

  def handler(signum, frame):
    del frame
    received.append(signum)
    name = signal.Signals(signum).name
    if len(received) == 1:
      raise errors.Interrupted(f'received {name}')
    print(f'error: received {name} again during clean-up; exiting now',
          file=sys.stderr, flush=True)
    workers.stop_all_workers()
    os._exit(errors.Interrupted.exit_code)

  previous = {s: signal.getsignal(s) for s in _SIGNALS}
  for s in _SIGNALS:
    signal.signal(s, handler)
  try:
    yield
  finally:
    for s, h in previous.items():
      signal.signal(s, h)
