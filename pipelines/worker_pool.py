"""Beam's external SDK worker pool, listening on one address.

    python -m impax.pipelines.worker_pool --host 127.0.0.1 --port 50000

Beam's own entry point (apache_beam.runners.worker.worker_pool_main) binds every
interface, and the pool runs whatever a request asks of it: this serves the same servicer
on the address given. Each worker it starts runs `python` from PATH.
"""

import argparse
import logging

import grpc
from apache_beam.portability.api import beam_fn_api_pb2_grpc
from apache_beam.runners.worker import worker_pool_main
from apache_beam.utils import thread_pool_executor


def serve(host: str, port: int) -> grpc.Server:
  """Starts the pool's gRPC server on host:port; fails if it cannot bind there."""
  # As Beam's pool: pings from a runner between bundles do not close the connection.
  server = grpc.server(thread_pool_executor.shared_unbounded_instance(),
                       options=[("grpc.http2.max_pings_without_data", 0),
                                ("grpc.http2.max_ping_strikes", 0)])
  address = f"{host}:{port}"
  server.add_insecure_port(address)  # raises if it cannot bind there
  pool = worker_pool_main.BeamFnExternalWorkerPoolServicer(use_process=True)
  beam_fn_api_pb2_grpc.add_BeamFnExternalWorkerPoolServicer_to_server(pool, server)
  server.start()
  logging.info("Beam's SDK worker pool listens on %s", address)
  return server


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--host", default="127.0.0.1")
  parser.add_argument("--port", type=int, required=True)
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO)
  serve(args.host, args.port).wait_for_termination()


if __name__ == "__main__":
  main()
