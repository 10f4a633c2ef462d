"""Beam's own gRPC servers on loopback: what a running job listens on in impax's processes.

Beam's Python runner hard-codes every interface (`[::]:0`) for the servers it starts while
a job runs: the control, data, state and logging servers the DirectRunner and the portable
job service give their SDK workers, the job service's artifact server, and the worker pool
the PrismRunner starts in the launcher. Each accepts what a worker would send (data Beam
unpickles, bundles to run) from anyone who can reach the machine. Its workers always dial
`localhost:PORT`, so these servers lose nothing by listening on localhost only.

`patch()` makes the `grpc.server` of those Beam modules one whose wildcard addresses are
localhost's; an explicit address is left as given. `python -m impax.pipelines.loopback
MODULE ARGS` runs a Beam entry point (the portable engine's job service) so patched.
"""

import runpy
import sys
import threading

import grpc
from apache_beam.runners.portability import abstract_job_service, local_job_service
from apache_beam.runners.portability.fn_api_runner import worker_handlers
from apache_beam.runners.worker import worker_pool_main

_MODULES = (worker_handlers, abstract_job_service, local_job_service, worker_pool_main)
_WILDCARDS = ("[::]:", "0.0.0.0:", ":")


class _Server:
  """A grpc.Server whose wildcard addresses listen on localhost."""

  def __init__(self, server):
    self._server = server

  def add_insecure_port(self, address: str) -> int:
    for wildcard in _WILDCARDS:
      if address.startswith(wildcard):
        address = "localhost:" + address[len(wildcard):]
        break
    return self._server.add_insecure_port(address)

  def __getattr__(self, name):
    return getattr(self._server, name)


class _Grpc:
  """The grpc module, but for its server()."""

  def __getattr__(self, name):
    return getattr(grpc, name)

  @staticmethod
  def server(*args, **kwargs):
    return _Server(grpc.server(*args, **kwargs))


_lock = threading.Lock()


def patch():
  """Idempotent: Beam's servers in this process listen on localhost from now on."""
  with _lock:
    for module in _MODULES:
      if not isinstance(module.grpc, _Grpc):
        module.grpc = _Grpc()


if __name__ == "__main__":
  patch()
  module, sys.argv = sys.argv[1], sys.argv[1:]
  runpy.run_module(module, run_name="__main__", alter_sys=True)
