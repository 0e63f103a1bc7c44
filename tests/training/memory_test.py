"""The memory columns' reader, against psutil and for gone processes."""

import math
import os
import subprocess
import sys

import psutil
import pytest

from tff_pipeline.training import memory


def test_rss_is_psutils_reading_in_mib():
  expected = psutil.Process().memory_info().rss / 2**20
  assert memory.rss_mib(os.getpid()) == pytest.approx(expected, abs=5)


def test_worker_column_sums_local_workers_and_is_nan_without_them():
  # The child says it is up before it is measured: a child still loading
  # the interpreter grows between the two readings (seen on a loaded
  # machine: 0.008 MiB, then 13 MiB).
  child = subprocess.Popen([sys.executable, '-c', 'import time; '
                            'print("up", flush=True); time.sleep(60)'],
                           stdout=subprocess.PIPE, text=True)
  try:
    assert child.stdout.readline() == 'up\n'
    child_mib = psutil.Process(child.pid).memory_info().rss / 2**20
    row = memory.round_metrics([child.pid, child.pid])
    assert row[memory.WORKER_RSS] == pytest.approx(2 * child_mib, abs=2)
    assert row[memory.PYTHON_RSS] == pytest.approx(
        psutil.Process().memory_info().rss / 2**20, abs=5)
    # Remote workers: the coordinator measures only itself.
    assert math.isnan(memory.round_metrics([])[memory.WORKER_RSS])
  finally:
    child.kill()
    child.wait()
  assert math.isnan(memory.rss_mib(child.pid))


def test_rss_bytes_is_the_one_reading_of_the_benchmarks_too():
  from benchmarks import measure  # pylint: disable=g-import-not-at-top
  assert measure.rss_bytes is memory.rss_bytes
  rss = memory.rss_bytes(os.getpid())
  assert isinstance(rss, int)
  assert rss == pytest.approx(psutil.Process().memory_info().rss, abs=5 * 2**20)
  assert memory.rss_bytes(2**22 + 1) is None  # Above Linux's pid_max.


def test_probe_asks_for_the_pids_every_time():
  pids = [[], [os.getpid()]]
  probe = memory.probe(lambda: pids.pop(0))
  assert math.isnan(probe()[memory.WORKER_RSS])
  assert probe()[memory.WORKER_RSS] > 0


def test_release_free_heap_gives_freed_memory_back():
  if not memory.release_free_heap():
    pytest.skip('no glibc malloc_trim here')
  before = memory.rss_mib(os.getpid())
  # Many small objects (malloc's heap, not mmap), then all but a few freed.
  blocks = [bytearray(512) for _ in range(400_000)]
  keep = blocks[::50_000]
  del blocks
  grown = memory.rss_mib(os.getpid())
  memory.release_free_heap()
  after = memory.rss_mib(os.getpid())
  assert grown - before > 100  # ~230 MiB of blocks and list were touched.
  assert after - before < (grown - before) / 2
  del keep
