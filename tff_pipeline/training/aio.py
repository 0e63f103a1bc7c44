"""Running the async `tff.program` managers from synchronous code.

`tff.program`'s state and release managers are coroutines. `asyncio.run`
cannot be called where an event loop is already running, which is always the
case in a Jupyter kernel; there the coroutine runs on a fresh loop in a
helper thread instead, so the same training loop works from a binary and from
a notebook.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar('T')

_executor = concurrent.futures.ThreadPoolExecutor(
    max_workers=1, thread_name_prefix='tff_pipeline_aio')


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
  """Runs `coroutine` to completion and returns its result."""
  try:
    asyncio.get_running_loop()
  except RuntimeError:
    return asyncio.run(coroutine)
  return _executor.submit(asyncio.run, coroutine).result()
