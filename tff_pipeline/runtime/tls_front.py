"""A mutual-TLS gRPC front for a TFF worker that listens on loopback only.

`worker_binary` has no TLS. With `run_worker --tls_*`, the worker listens on
127.0.0.1 (through `bind_shim`) and this front listens on the public address:
gRPC's own TLS terminates there, with `require_client_auth=True`, so a peer
without a certificate signed by the client CA never completes the handshake
and never reaches a method.

The front does not know TFF's protocol. For every method of the executor
service, as listed by the service's protobuf descriptor (unary or
streaming), it forwards the serialized request bytes to the worker and the
response bytes back, with the call's deadline, metadata, status and
cancellation. Other method names get UNIMPLEMENTED from gRPC.
"""

from __future__ import annotations

from concurrent import futures
import ipaddress

import grpc
from tensorflow_federated.proto.v0 import executor_pb2

from tff_pipeline import errors
from tff_pipeline.runtime import tls as tls_lib
from tff_pipeline.runtime import workers as workers_lib

EXECUTOR_SERVICE = executor_pb2.DESCRIPTOR.services_by_name['ExecutorGroup']

# Calls forwarded at once (each holds a thread while the worker works); more
# wait in gRPC's queue.
_MAX_CONCURRENT_CALLS = 256
# Seconds above which a remaining time means "no deadline" (a year).
_NO_DEADLINE = 365 * 24 * 3600.0
# Metadata that gRPC sets itself on each hop.
_HOP_METADATA_PREFIXES = (':', 'grpc-')
_HOP_METADATA_KEYS = frozenset({'user-agent', 'content-type', 'te'})


def _forwardable(metadata) -> list[tuple[str, str | bytes]]:
  return [(key, value) for key, value in (metadata or ())
          if not key.startswith(_HOP_METADATA_PREFIXES)
          and key not in _HOP_METADATA_KEYS]


def _abort_with(context: grpc.ServicerContext, error: grpc.RpcError):
  context.set_trailing_metadata(_forwardable(error.trailing_metadata()))
  context.abort(error.code(), error.details() or '')


def _timeout(context: grpc.ServicerContext) -> float | None:
  """The caller's remaining time, for the forwarded call (None: no limit)."""
  remaining = context.time_remaining()
  # Without a deadline gRPC reports about 2**63 ns as seconds, which would
  # overflow into an already-expired deadline if passed on.
  return remaining if remaining is not None and remaining < _NO_DEADLINE else (
      None)


def _unary_response(upstream, request, context):
  call = upstream.future(request, timeout=_timeout(context),
                         metadata=_forwardable(context.invocation_metadata()))
  context.add_callback(call.cancel)
  try:
    response = call.result()
  except grpc.RpcError as e:
    _abort_with(context, e)
  context.set_trailing_metadata(_forwardable(call.trailing_metadata()))
  return response


def _stream_response(upstream, request, context):
  call = upstream(request, timeout=_timeout(context),
                  metadata=_forwardable(context.invocation_metadata()))
  context.add_callback(call.cancel)
  try:
    yield from call
  except grpc.RpcError as e:
    _abort_with(context, e)
  context.set_trailing_metadata(_forwardable(call.trailing_metadata()))


class _ForwardingHandler(grpc.GenericRpcHandler):
  """Forwards every method of one service, as raw bytes, over `channel`."""

  def __init__(self, channel: grpc.Channel, service):
    self._handlers = {}
    for method in service.methods:
      path = f'/{service.full_name}/{method.name}'
      streaming = (method.client_streaming, method.server_streaming)
      make_upstream, make_handler = {
          (False, False): (channel.unary_unary,
                           grpc.unary_unary_rpc_method_handler),
          (False, True): (channel.unary_stream,
                          grpc.unary_stream_rpc_method_handler),
          (True, False): (channel.stream_unary,
                          grpc.stream_unary_rpc_method_handler),
          (True, True): (channel.stream_stream,
                         grpc.stream_stream_rpc_method_handler),
      }[streaming]
      upstream = make_upstream(path)  # No (de)serializers: bytes pass as is.
      forward = _stream_response if method.server_streaming else (
          _unary_response)
      self._handlers[path] = make_handler(
          lambda request, context, upstream=upstream, forward=forward: (
              forward(upstream, request, context)))

  def service(self, handler_call_details):
    return self._handlers.get(handler_call_details.method)


def _host_port(host: str, port: int) -> str:
  return f'[{host}]:{port}' if ipaddress.ip_address(host).version == 6 else (
      f'{host}:{port}')


class TlsFront:
  """A gRPC server on `bind_address:port` that forwards to a local worker.

  Args:
    worker_address: `host:port` of the worker (on loopback).
    bind_address: IP literal to listen on.
    port: Port to listen on.
    tls: The server's certificate, key and client CA.
    service: Protobuf service descriptor whose methods are forwarded
      (TFF's executor service by default).
  """

  def __init__(self, worker_address: str, bind_address: str, port: int,
               tls: tls_lib.ServerTls, service=EXECUTOR_SERVICE):
    self.address = _host_port(bind_address, port)
    self._channel = grpc.insecure_channel(
        worker_address, workers_lib.GRPC_CHANNEL_OPTIONS)
    self._server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=_MAX_CONCURRENT_CALLS,
                                   thread_name_prefix='tls_front'),
        handlers=[_ForwardingHandler(self._channel, service)],
        # Without this, Linux lets a second server share a port in use.
        options=[*workers_lib.GRPC_CHANNEL_OPTIONS, ('grpc.so_reuseport', 0)])
    try:
      bound = self._server.add_secure_port(self.address, tls.credentials())
    except RuntimeError:
      bound = 0
    if not bound:
      self._channel.close()
      raise errors.RuntimeUnavailableError(
          f'cannot listen on {self.address}: the port is in use or the '
          'address is not one of this machine\'s')

  def start(self) -> 'TlsFront':
    self._server.start()
    return self

  def stop(self, grace: float | None = 1.0) -> None:
    self._server.stop(grace).wait()
    self._channel.close()

  def __enter__(self) -> 'TlsFront':
    return self.start()

  def __exit__(self, *exc_info) -> None:
    self.stop()
