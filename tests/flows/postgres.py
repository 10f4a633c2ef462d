"""A PostgreSQL server of its own on 127.0.0.1, from Debian's `postgresql` package.

Used by the tests' fixture and by .ci/run (`python tests/flows/postgres.py start DIR`, then
`stop DIR`). The server runs as the `postgres` user when this runs as root (initdb refuses
root), trusts loopback connections, and is stopped by its process id.
"""

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

USER = "impax"


def binary(name: str) -> str:
  """Debian keeps the server's programs out of PATH, under /usr/lib/postgresql/VERSION/bin."""
  found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or [shutil.which(name)]
  if not found[-1]:
    raise RuntimeError(f"no PostgreSQL {name}: install Debian's postgresql "
                       "(scripts/install.sh does, as root)")
  return found[-1]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _as_server_user() -> dict:
  return {"user": "postgres", "group": "postgres"} if os.geteuid() == 0 else {}


def start(directory: str | None = None) -> tuple[str, int, str]:
  """Starts a fresh server; (its URL for asyncpg, its process id, its folder)."""
  # Under /tmp, not pytest's folders: those are root's alone, and the server runs as postgres.
  directory = directory or tempfile.mkdtemp(prefix="impax-postgres-")
  data = os.path.join(directory, "data")
  os.makedirs(data, exist_ok=True)
  if os.geteuid() == 0:
    shutil.chown(directory, "postgres", "postgres")
    shutil.chown(data, "postgres", "postgres")
  log_path = os.path.join(directory, "server.log")
  subprocess.run([binary("initdb"), "-D", data, "-U", USER, "--auth=trust", "-E", "UTF8",
                  "--no-sync"], check=True, capture_output=True, **_as_server_user())
  port = _free_port()
  with open(log_path, "wb") as log:
    proc = subprocess.Popen([binary("postgres"), "-D", data, "-h", "127.0.0.1", "-p", str(port),
                             "-k", directory, "-c", "fsync=off"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            **_as_server_user())
  deadline = time.monotonic() + 60
  while subprocess.run([binary("pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                       capture_output=True).returncode != 0:
    if proc.poll() is not None or time.monotonic() > deadline:
      stop(proc.pid, directory)
      raise RuntimeError(f"PostgreSQL did not start:\n{open(log_path).read()[-3000:]}")
    time.sleep(0.2)
  with open(os.path.join(directory, "pid"), "w") as f:
    f.write(str(proc.pid))
  return f"postgresql+asyncpg://{USER}@127.0.0.1:{port}", proc.pid, directory


def create_database(url: str, name: str) -> str:
  """A new, empty database on the server at url; the URL of it."""
  host_port = url.rsplit("@", 1)[1]
  host, port = host_port.split(":")
  subprocess.run([binary("createdb"), "-h", host, "-p", port, "-U", USER, name], check=True,
                 capture_output=True)
  return f"{url}/{name}"


def stop(pid: int, directory: str) -> None:
  """Ends the server by its process id (a fast shutdown) and removes its folder."""
  try:
    os.kill(pid, signal.SIGINT)
  except ProcessLookupError:
    pass
  deadline = time.monotonic() + 30
  while time.monotonic() < deadline:
    try:
      os.kill(pid, 0)
    except ProcessLookupError:
      break
    # the server is our child in the fixture; reap it so it does not linger as a zombie
    try:
      if os.waitpid(pid, os.WNOHANG)[0] == pid:
        break
    except ChildProcessError:
      pass
    time.sleep(0.1)
  else:
    os.kill(pid, signal.SIGKILL)
  shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
  # start DIR: prints the server's URL; stop DIR: ends the server that `start DIR` began.
  command, directory = sys.argv[1], sys.argv[2]
  if command == "start":
    url, _, _ = start(directory)
    print(url)
  elif command == "stop":
    with open(os.path.join(directory, "pid")) as f:
      stop(int(f.read()), directory)
  else:
    sys.exit(f"usage: {sys.argv[0]} start|stop DIR")
