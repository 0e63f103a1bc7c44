"""TFF execution contexts that run on workers we start (or are told about).

This is the one module of ours that assembles TFF's execution stack by hand,
from `tff.framework` pieces; an upgrade of TFF that moves them touches only
this file.

* Local: one `WorkerProcess` on this machine, owned by the `Runtime`.
* Remote: `host:port` addresses of workers started elsewhere with
  `python -m experiments.run_worker`. With several workers, each round's
  clients are split across them with TFF's mergeable-computation context.

A worker that cannot be reached, or dies mid-round, raises
`errors.RuntimeUnavailableError` naming its address. (TFF would otherwise
retry an UNAVAILABLE worker forever, which looks like a hang.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import grpc
import tensorflow_federated as tff

from tff_pipeline import errors
from tff_pipeline.runtime import tls as tls_lib
from tff_pipeline.runtime import tls_front
from tff_pipeline.runtime import workers as workers_lib



def parse_worker_addresses(spec: str | Sequence[str]) -> list[str]:
  """Parses '--workers=host1:port,host2:port' into a checked address list."""
  items = spec.split(',') if isinstance(spec, str) else list(spec)
  addresses = [item.strip() for item in items if item.strip()]
  for address in addresses:
    host, sep, port = address.rpartition(':')
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
      raise errors.UsageError(
          f'--workers: {address!r} is not host:port with a port in 1..65535'
      )
  if len(set(addresses)) != len(addresses):
    raise errors.UsageError(f'--workers lists an address twice: {addresses}')
  return addresses


class _WorkerConnection:
  """A gRPC channel and TFF stub to one worker, with readiness checks."""

  def __init__(
      self,
      address: str,
      process: workers_lib.WorkerProcess | None,
      connect_timeout: float,
      tls: tls_lib.ClientTls | None = None,
  ):
    self.address = address
    self.process = process
    self.connect_timeout = connect_timeout
    self.tls = tls
    if tls is None:
      self.channel = grpc.insecure_channel(
          address, workers_lib.GRPC_CHANNEL_OPTIONS)
    else:
      self.channel = grpc.secure_channel(
          address, tls.credentials(), workers_lib.GRPC_CHANNEL_OPTIONS)
    self.stub = tff.framework.RemoteExecutorGrpcStub(self.channel)

  def describe(self) -> str:
    if self.process is not None:
      return f'local TFF worker (pid {self.process.pid}, {self.address})'
    return f'TFF worker {self.address}'

  def ensure_ready(self, timeout: float | None = None) -> None:
    """Waits for the channel to be READY, or raises a clear error."""
    if self.process is not None and not self.process.is_running():
      tail = self.process.log_tail()
      raise errors.RuntimeUnavailableError(
          f'{self.describe()} exited with code {self.process.returncode()}'
          + (f': {tail.splitlines()[-1]}' if tail else '')
      )
    if self.stub.is_ready:
      return
    timeout = self.connect_timeout if timeout is None else timeout
    ready = workers_lib.wait_until(
        lambda: self.stub.is_ready
        or (self.process is not None and not self.process.is_running()),
        timeout,
    )
    if ready and self.stub.is_ready:
      return
    if self.process is not None and not self.process.is_running():
      self.ensure_ready(0)  # Raises with the exit code.
    cause = self._connection_failure_cause()
    explanation = tls_lib.explain_connection_failure(cause, self.tls)
    if explanation:
      raise errors.RuntimeUnavailableError(
          f'{self.describe()} is not reachable after {timeout:.0f} s: '
          f'{explanation}')
    raise errors.RuntimeUnavailableError(
        f'{self.describe()} is not reachable after {timeout:.0f} s; check '
        'that it is running and that its port is open to this machine'
        + (f' ({cause})' if cause else '')
    )

  def _connection_failure_cause(self) -> str:
    """gRPC's reason for the last failed connection ('' if unknown)."""
    # A call that does not wait for READY fails at once with the channel's
    # last connection error (refused, TLS handshake, ...).
    probe = self.channel.unary_unary('/tff_pipeline.ConnectionProbe/Probe')
    try:
      probe(b'', timeout=5, wait_for_ready=False)
    except grpc.RpcError as e:
      if e.code() == grpc.StatusCode.UNAVAILABLE:
        return tls_lib.connection_failure_cause(e.details() or '')
    return ''

  def executor_factory(self) -> tff.framework.ExecutorFactory:
    def stack_fn(cardinalities):
      # Server-only sub-computations carry no CLIENTS cardinality; the remote
      # executor still needs one (see ENVIRONMENT.md).
      if cardinalities.get(tff.CLIENTS) is None:
        cardinalities[tff.CLIENTS] = 0
      self.ensure_ready()
      executor = tff.framework.RemoteExecutor(self.stub)
      executor.set_cardinalities(cardinalities)
      return executor

    return tff.framework.ResourceManagingExecutorFactory(stack_fn)

  def close(self) -> None:
    self.channel.close()


def _compile(comp):
  """TFF's native compilation, with secure intrinsics made simulatable.

  The C++ runtime has no secure-sum protocol. As in TFF's own test contexts
  (`tff.backends.test`), `federated_secure_sum(_bitwidth)` are replaced by
  TensorFlow bodies that do the same bounds checks followed by a plain sum,
  so the numbers (clipping, quantization) are those of secure aggregation;
  only the cryptography is not simulated. Computations without secure
  intrinsics are unchanged.
  """
  comp = tff.backends.test.replace_secure_intrinsics_with_bodies(comp)
  return tff.backends.native.desugar_and_transform_to_native(comp)


def _context_kwargs() -> dict:
  return dict(
      compiler_fn=_compile,
      transform_args=tff.tensorflow.transform_args,
      transform_result=tff.tensorflow.transform_result,
  )


class Runtime:
  """An execution context and the workers behind it.

  Use it as a context manager: inside the `with` block, TFF computations run
  on these workers; on exit the local worker (if any) is stopped.

  Args:
    worker_addresses: `host:port` of remote workers. Empty means: start one
      local worker and use it.
    max_concurrent_computation_calls: For the local worker; -1 is no limit.
    worker_log: File for the local worker's output (default: /dev/null).
    connect_timeout: Seconds to wait for a worker to become reachable.
    tls: Credentials for mutual TLS with the remote workers (None:
      plaintext); see `tls.ClientTls`.
  """

  def __init__(
      self,
      worker_addresses: Sequence[str] = (),
      *,
      max_concurrent_computation_calls: int = -1,
      worker_log: str | None = None,
      connect_timeout: float = 30.0,
      tls: tls_lib.ClientTls | None = None,
  ):
    self.local_worker: workers_lib.WorkerProcess | None = None
    self._connections: list[_WorkerConnection] = []
    addresses = list(worker_addresses)
    if tls is not None and not addresses:
      raise errors.UsageError(
          '--worker_tls_ca, --worker_tls_cert and --worker_tls_key apply to '
          'remote --workers only')
    try:
      if not addresses:
        self.local_worker = workers_lib.WorkerProcess(
            max_concurrent_computation_calls=max_concurrent_computation_calls,
            log_path=worker_log,
        ).start()
        self._connections = [_WorkerConnection(
            self.local_worker.address, self.local_worker, connect_timeout)]
      else:
        self._connections = [
            _WorkerConnection(a, None, connect_timeout, tls) for a in addresses
        ]
      for connection in self._connections:
        connection.ensure_ready()
      self.context = self._build_context()
    except BaseException:
      self.close()
      raise

  @property
  def addresses(self) -> list[str]:
    return [c.address for c in self._connections]

  @property
  def local_worker_pids(self) -> list[int]:
    """PIDs of the running workers this runtime started (at most one).

    Empty with remote workers: those processes belong to other programs
    (possibly on other machines), so this process cannot measure them.
    """
    worker = self.local_worker
    if worker is None or not worker.is_running() or worker.pid is None:
      return []
    return [worker.pid]

  def _build_context(self):
    if len(self._connections) == 1:
      return tff.framework.SyncExecutionContext(
          self._connections[0].executor_factory(), **_context_kwargs()
      )
    async_contexts = [
        tff.framework.AsyncExecutionContext(
            c.executor_factory(), **_context_kwargs()
        )
        for c in self._connections
    ]
    return tff.backends.native.create_mergeable_comp_execution_context(
        async_contexts
    )

  def close(self) -> None:
    for connection in self._connections:
      connection.close()
    if self.local_worker is not None:
      self.local_worker.stop()

  @contextlib.contextmanager
  def installed(self) -> Iterator['Runtime']:
    """Makes this runtime's context the current TFF context (this thread)."""
    with tff.framework.get_context_stack().install(self.context):
      yield self

  def __enter__(self) -> 'Runtime':
    self._installed = self.installed()
    self._installed.__enter__()
    return self

  def __exit__(self, *exc_info) -> None:
    try:
      self._installed.__exit__(*exc_info)
    finally:
      self.close()


def serve_worker(
    port: int,
    *,
    bind_address: str | None,
    max_concurrent_computation_calls: int = -1,
    log_path: str | None = None,
    on_ready=None,
    intra_op_threads: int | None = None,
    inter_op_threads: int | None = None,
    tls: tls_lib.ServerTls | None = None,
) -> int:
  """Runs a TFF worker in the foreground until it exits or we are stopped.

  For `python -m experiments.run_worker`: other machines' coordinators
  connect to it with `--workers=host:port`. Stops the worker on SIGINT or
  SIGTERM (which `lifecycle.raise_on_termination_signals` turns into
  `errors.Interrupted`) and on any other exit path.

  With `tls`, the worker listens on a free port of 127.0.0.1 and a
  `tls_front.TlsFront` serves `bind_address:port`, requiring client
  certificates; if the worker exits, the front stops too.

  Args:
    port: TCP port to serve on.
    bind_address: Address to listen on (None: every interface; with `tls`,
      an IP literal is required).
    max_concurrent_computation_calls: Passed to the worker; -1 is no limit.
    log_path: File for the worker's output; /dev/null when None.
    on_ready: Called with the `WorkerProcess` once it accepts connections
      (through the TLS front, if any).
    intra_op_threads: TensorFlow intra-op threads (see `WorkerProcess`).
    inter_op_threads: TensorFlow inter-op threads (see `WorkerProcess`).
    tls: Certificate, key and client CA for mutual TLS.

  Returns:
    The worker's exit code, if it exits by itself.
  """
  worker = workers_lib.WorkerProcess(
      None if tls else port,
      bind_address='127.0.0.1' if tls else bind_address, log_path=log_path,
      max_concurrent_computation_calls=max_concurrent_computation_calls,
      intra_op_threads=intra_op_threads, inter_op_threads=inter_op_threads)
  with worker, contextlib.ExitStack() as stack:
    connection = _WorkerConnection(worker.address, worker, connect_timeout=60)
    stack.callback(connection.close)
    connection.ensure_ready()
    if tls is not None:
      stack.enter_context(tls_front.TlsFront(
          worker.address, bind_address, port, tls))
    if on_ready is not None:
      on_ready(worker)
    while worker.is_running():
      workers_lib.wait_until(lambda: not worker.is_running(), timeout=1.0,
                             interval=0.2)
  return worker.returncode() or 0


_default_runtime: Runtime | None = None


def use_local_runtime(**kwargs) -> Runtime:
  """Returns the default managed local runtime, starting it if needed.

  Used by notebooks and tests: TFF computations invoked outside any
  `Runtime` block run on this worker. It is stopped at interpreter exit, or
  by `shutdown_default_runtime()`. Repeated calls reuse it while it is alive.
  """
  global _default_runtime
  if _default_runtime is None or (
      _default_runtime.local_worker is not None
      and not _default_runtime.local_worker.is_running()
  ):
    _default_runtime = Runtime(**kwargs)
  return _default_runtime


def shutdown_default_runtime() -> None:
  """Stops the worker of the default runtime, if one was started."""
  global _default_runtime
  if _default_runtime is not None:
    _default_runtime.close()
    _default_runtime = None


class _ManagedDefaultContext(tff.framework.SyncContext):
  """The default TFF context: a managed local worker, started on first use.

  TFF's own default context would start an unmanaged worker the first time a
  computation runs outside any `Runtime`; we put this one in its place.
  """

  def invoke(self, comp, arg):
    return use_local_runtime().context.invoke(comp, arg)


def install_managed_default_context() -> None:
  """Replaces TFF's default context (this thread) with a managed one."""
  tff.framework.set_default_context(_ManagedDefaultContext())
