"""TFF's C++ worker (`worker_binary`) as a child process whose lifetime we own.

TFF's own local context starts `worker_binary --port=N` lazily and relies on a
`__del__` to stop it, which often does not run at interpreter exit. A leaked
worker keeps the parent's stdout and stderr open, so a pipe reading them (CI's
log capture, `cmd | tail`) never ends. We therefore start the worker
ourselves and make sure it ends on every path:

  * normal exit and exceptions: `WorkerProcess.stop()` from a `finally` and
    from an `atexit` hook (`stop_all_workers`);
  * SIGINT/SIGTERM: the handlers in `lifecycle` turn them into exceptions, so
    the same `finally` blocks run;
  * SIGKILL of the parent, which runs no Python at all: on Linux the child is
    started with `PR_SET_PDEATHSIG = SIGKILL`, so the kernel kills it when
    the thread that started it dies.

The worker's output goes to a log file (or /dev/null), never to our own
stdout/stderr, so even a worker that somehow survives cannot hold a pipe open.

`worker_binary` has no flag for its listening address and binds every
interface, with no TLS or authentication. By default we start it with the
`bind_shim` library preloaded, which rewrites that wildcard bind to
127.0.0.1, so only this machine can reach the local worker.

TensorFlow's thread pools in the worker are sized for federated clients, not
for one big model: the worker runs each round's clients at once, and at
small batches each client is a chain of small ops. One intra-op thread per
op and several inter-op threads per core (`thread_env`) keep every core
busy with whole clients instead of splitting each small op across cores; on
the paper CNN this made rounds about 1.5x faster than TensorFlow's defaults
(benchmarks/README.md).
"""

from __future__ import annotations

import atexit
from collections.abc import Mapping
import ctypes
import ctypes.util
import ipaddress
import os
import signal
import subprocess
import sys
import threading
import time

from absl import logging
import portpicker
import tensorflow_federated as tff

from tff_pipeline import errors
from tff_pipeline.runtime import bind_shim

_PR_SET_PDEATHSIG = 1

_GRPC_MAX_MESSAGE_BYTES = 2 * 1000 * 1000 * 1000
# gRPC options of every channel (and server) that carries a worker's calls.
GRPC_CHANNEL_OPTIONS = [
    ('grpc.max_message_length', _GRPC_MAX_MESSAGE_BYTES),
    ('grpc.max_receive_message_length', _GRPC_MAX_MESSAGE_BYTES),
    ('grpc.max_send_message_length', _GRPC_MAX_MESSAGE_BYTES),
]

_live_workers: set['WorkerProcess'] = set()
_live_lock = threading.Lock()


def worker_binary_path() -> str:
  """Path of the C++ executor service shipped inside the TFF wheel."""
  path = os.path.join(os.path.dirname(tff.__file__), 'data', 'worker_binary')
  if not os.path.isfile(path):
    raise errors.RuntimeUnavailableError(
        f'TFF worker binary not found at {path}; is tensorflow-federated '
        '0.87.0 installed (see BUILD.md)?'
    )
  return path


INTRA_OP_THREADS_ENV = 'TF_NUM_INTRAOP_THREADS'
INTER_OP_THREADS_ENV = 'TF_NUM_INTEROP_THREADS'
DEFAULT_INTRA_OP_THREADS = 1
INTER_OP_THREADS_PER_CORE = 4


def thread_env(intra_op_threads: int | None = None,
               inter_op_threads: int | None = None,
               environ: Mapping[str, str] | None = None) -> dict[str, str]:
  """TensorFlow thread-pool settings for a worker process.

  Explicit arguments win; then `TF_NUM_INTRAOP_THREADS` and
  `TF_NUM_INTEROP_THREADS` from `environ` (default: this process's
  environment); then 1 intra-op thread and 4 inter-op threads per core.

  Raises:
    UsageError: a thread count is not a positive integer.
  """
  environ = os.environ if environ is None else environ
  cores = os.cpu_count() or 1
  settings = {}
  for name, value, default in (
      (INTRA_OP_THREADS_ENV, intra_op_threads, DEFAULT_INTRA_OP_THREADS),
      (INTER_OP_THREADS_ENV, inter_op_threads,
       INTER_OP_THREADS_PER_CORE * cores)):
    if value is None:
      text = environ.get(name, '').strip()
      value = text if text else default
    try:
      count = int(value)
    except ValueError:
      count = 0
    if count < 1:
      raise errors.UsageError(
          f'{name}={value!r}: a TFF worker thread count must be a positive '
          'integer')
    settings[name] = str(count)
  return settings


def _make_die_with_parent():
  """Returns a `preexec_fn` that asks the kernel to SIGKILL the child when
  its parent thread dies (Linux only; elsewhere returns None)."""
  if not sys.platform.startswith('linux'):
    return None
  libc_name = ctypes.util.find_library('c') or 'libc.so.6'
  # Resolve prctl before forking: the child must only make the call.
  prctl = ctypes.CDLL(libc_name, use_errno=True).prctl
  prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong,
                    ctypes.c_ulong, ctypes.c_ulong]
  parent_pid = os.getpid()

  def die_with_parent():
    prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    # If the parent died between fork and prctl, nobody will ever stop us.
    if os.getppid() != parent_pid:
      os._exit(1)

  return die_with_parent


def _parse_bind_address(
    address: str | None,
) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
  if address is None:
    return None
  try:
    return ipaddress.ip_address(address)
  except ValueError:
    raise errors.UsageError(
        f'worker bind address {address!r} is not an IPv4 or IPv6 address '
        "literal (for example '127.0.0.1' or '::1')"
    ) from None


# glibc malloc settings for the worker (each kept if already set in our
# environment). The worker's many threads each get a malloc arena, and the
# heap fragments across them: two loopback workers grew by 58-142 MiB from
# round 100 to 2,000 (benchmarks/README.md, "Soak"). One arena bounds that
# at no measurable cost to a paper-CNN round on 2 cores (docs/memory.md);
# a many-core worker may contend on the one arena (not measured): set
# `MALLOC_ARENA_MAX` in run_worker's environment to choose otherwise.
WORKER_MALLOC_ENV = {
    'MALLOC_ARENA_MAX': '1',
}


class WorkerProcess:
  """One `worker_binary` child process, serving TFF's executor over gRPC.

  Args:
    port: TCP port to serve on; a free one is picked when None.
    max_concurrent_computation_calls: Passed to the worker; -1 is no limit.
    log_path: File that receives the worker's stdout and stderr; /dev/null
      when None.
    extra_env: Environment variables added to the worker's environment
      (they override the thread settings).
    intra_op_threads: TensorFlow intra-op threads in the worker; None takes
      `TF_NUM_INTRAOP_THREADS` from our environment, else 1.
    inter_op_threads: TensorFlow inter-op threads in the worker; None takes
      `TF_NUM_INTEROP_THREADS` from our environment, else 4 per core.
    bind_address: IPv4 or IPv6 literal the worker listens on (through the
      LD_PRELOAD `bind_shim`); None listens on every interface, as the
      binary does by itself. If the shim cannot be built, the worker starts
      anyway, on every interface, with a logged warning.

  Raises:
    UsageError: `bind_address` is not an IP address literal, or a thread
      count is not a positive integer.
  """

  def __init__(
      self,
      port: int | None = None,
      *,
      max_concurrent_computation_calls: int = -1,
      log_path: str | None = None,
      extra_env: dict[str, str] | None = None,
      bind_address: str | None = '127.0.0.1',
      intra_op_threads: int | None = None,
      inter_op_threads: int | None = None,
  ):
    self.threads = thread_env(intra_op_threads, inter_op_threads)
    self.port = port or portpicker.pick_unused_port()
    self.max_concurrent_computation_calls = max_concurrent_computation_calls
    self.log_path = log_path
    self.extra_env = dict(extra_env or {})
    self.bind_address = bind_address
    self._bind_ip = _parse_bind_address(bind_address)
    self._process: subprocess.Popen | None = None

  @property
  def address(self) -> str:
    """`host:port` to connect to the worker from this machine."""
    ip = self._bind_ip
    if ip is not None and ip.version == 6 and ip.ipv4_mapped is not None:
      ip = ip.ipv4_mapped
    if ip is None or ip.is_unspecified:
      return f'localhost:{self.port}'
    return f'[{ip}]:{self.port}' if ip.version == 6 else f'{ip}:{self.port}'

  @property
  def pid(self) -> int | None:
    return self._process.pid if self._process else None

  def command(self) -> list[str]:
    return [
        worker_binary_path(),
        f'--port={self.port}',
        '--max_concurrent_computation_calls='
        f'{self.max_concurrent_computation_calls}',
    ]

  def environment(self) -> dict[str, str]:
    """The worker's environment: ours, then `WORKER_MALLOC_ENV` and a
    quiet TF log where ours does not set them, then the thread settings and
    `extra_env` (the LD_PRELOAD shim is added at start)."""
    env = dict(os.environ)
    env.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
    for name, value in WORKER_MALLOC_ENV.items():
      env.setdefault(name, value)
    env.update(self.threads)
    env.update(self.extra_env)
    return env

  def start(self) -> 'WorkerProcess':
    """Starts the process (idempotent while it is running)."""
    if self.is_running():
      return self
    env = self.environment()
    if self.bind_address is not None:
      self._add_bind_shim(env)
    if self.log_path:
      os.makedirs(os.path.dirname(os.path.abspath(self.log_path)),
                  exist_ok=True)
      output = open(self.log_path, 'ab')
    else:
      output = open(os.devnull, 'wb')
    with output:
      self._process = subprocess.Popen(
          self.command(),
          stdin=subprocess.DEVNULL,
          stdout=output,
          stderr=subprocess.STDOUT,
          env=env,
          preexec_fn=_make_die_with_parent(),
          close_fds=True,
      )
    with _live_lock:
      _live_workers.add(self)
    return self

  def _add_bind_shim(self, env: dict[str, str]) -> None:
    """Adds LD_PRELOAD and the bind address to `env`, or logs why not."""
    library = bind_shim.ensure_built()
    if library is None:
      logging.warning(
          'TFF worker on port %d: the bind shim is unavailable (see above), so '
          'it cannot be limited to %s and is listening on all interfaces',
          self.port, self.bind_address)
      return
    preload = env.get('LD_PRELOAD', '').strip()
    env['LD_PRELOAD'] = f'{preload}:{library}' if preload else library
    env[bind_shim.ENV_VAR] = self.bind_address

  def is_running(self) -> bool:
    return self._process is not None and self._process.poll() is None

  def returncode(self) -> int | None:
    return self._process.poll() if self._process else None

  def log_tail(self, max_chars: int = 400) -> str:
    if not self.log_path or not os.path.exists(self.log_path):
      return ''
    with open(self.log_path, 'rb') as f:
      f.seek(0, os.SEEK_END)
      f.seek(max(0, f.tell() - max_chars))
      return f.read().decode('utf-8', 'replace').strip()

  def stop(self, timeout: float = 5.0) -> None:
    """Stops the process: SIGINT, then SIGKILL after `timeout` seconds."""
    process = self._process
    if process is not None and process.poll() is None:
      try:
        process.send_signal(signal.SIGINT)
        process.wait(timeout)
      except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
      except ProcessLookupError:
        pass
    with _live_lock:
      _live_workers.discard(self)

  def __enter__(self) -> 'WorkerProcess':
    return self.start()

  def __exit__(self, *exc_info) -> None:
    self.stop()


def live_worker_pids() -> list[int]:
  """PIDs of the workers this process started that are still running."""
  with _live_lock:
    return [w.pid for w in _live_workers if w.is_running() and w.pid]


def stop_all_workers() -> None:
  """Stops every worker this process started. Safe to call repeatedly."""
  with _live_lock:
    workers = list(_live_workers)
  for worker in workers:
    worker.stop()


atexit.register(stop_all_workers)


def wait_until(predicate, timeout: float, interval: float = 0.05) -> bool:
  """Polls `predicate` until it is true or `timeout` seconds have passed."""
  deadline = time.monotonic() + timeout
  while True:
    if predicate():
      return True
    if time.monotonic() >= deadline:
      return False
    time.sleep(interval)
