"""What a build does when it cannot do what it was asked: one failure per bad line however
the line is bad, a non-zero exit when nothing (or too little) was written, one build at a
time into an output, and one `impax: error:` line with its own exit code for each failure a
user can cause or meet."""

import contextlib
import gzip
import json
import os
import signal
import subprocess
import sys

import pytest
from PIL import Image

from impax import cli
from impax.pipelines import lock

SMALL = ["--image-short-side", "32", "--quiet"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
  """A folder with two small images."""
  d = tmp_path_factory.mktemp("images")
  for i, color in enumerate(("red", "blue")):
    Image.new("RGB", (40, 30), color).save(d / f"{i}.png")
  return d


def manifest(path, lines: list[bytes]):
  path.write_bytes(b"".join(line + b"\n" for line in lines))
  return path


def good(i: int) -> bytes:
  return json.dumps({"id": f"good-{i}", "image": f"{i % 2}.png", "caption": f"a photo {i}"}).encode()


def build(manifest_path, output, *extra, split="train"):
  return cli.main(["build", "jsonl", "--input", str(manifest_path), "--output", str(output),
                   "--split", split, *SMALL, *extra])


def error_line(capsys) -> str:
  """The one line a failed command writes to stderr, less the progress line's."""
  lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("impax: ")]
  assert len(lines) == 1, lines
  assert lines[0].startswith("impax: error: "), lines
  return lines[0]


def read_failures(output, split="train"):
  with open(os.path.join(output, f"failures-{split}.jsonl")) as f:
    return [json.loads(line) for line in f]


@pytest.mark.parametrize("compressed", [False, True], ids=["ranges", "stream"])
def test_a_line_nested_past_the_recursion_limit_fails_alone(images, tmp_path, compressed):
  deep = b"[" * 100_000 + b"]" * 100_000
  lines = [good(0), deep, good(1), b'{"id": "x", "image": "0.png", "caption": ' + deep + b"}"]
  path = manifest(images / f"deep-{compressed}.jsonl", lines)
  if compressed:  # a compressed manifest is read by one worker as a stream
    path = images / f"deep-{compressed}.jsonl.gz"
    path.write_bytes(gzip.compress(b"".join(line + b"\n" for line in lines)))
  out = tmp_path / "out"
  assert build(path, out) == 0
  failures = read_failures(out)
  assert [f["source"].rsplit(":", 1)[1] for f in failures] == ["2", "4"]
  for f in failures:
    assert f["stage"] == "manifest" and f"line {f['source'].rsplit(':', 1)[1]}" in f["error"]
  with open(out / "metadata.json") as f:
    assert json.load(f)["splits"]["train"]["num_examples"] == 2


def test_a_build_that_wrote_nothing_fails(images, tmp_path, capsys):
  lines = [json.dumps({"id": f"m{i}", "image": f"missing-{i}.png"}).encode() for i in range(5)]
  out = tmp_path / "out"
  assert build(manifest(images / "missing.jsonl", lines), out) == cli.EXIT_FAILED
  line = error_line(capsys)
  assert "no example was written, all 5 input(s) failed" in line
  assert "read: " in line and "(5)" in line  # the reason, with its count
  assert str(out / "failures-train.jsonl") in line
  assert not (out / "metadata.json").exists()  # nothing that looks like a dataset
  assert len(read_failures(out)) == 5
  # An empty input, too.
  assert build(manifest(images / "empty.jsonl", []), tmp_path / "empty") == cli.EXIT_FAILED
  assert "holds no example" in error_line(capsys)


def test_max_failure_rate(images, tmp_path, capsys):
  lines = [good(0), good(1), good(2), json.dumps({"id": "gone", "image": "gone.png"}).encode()]
  path = manifest(images / "some-bad.jsonl", lines)
  out = tmp_path / "out"
  assert build(path, out, "--max-failure-rate", "0.2") == cli.EXIT_FAILED
  line = error_line(capsys)
  assert "1 of 4 inputs failed (25.0%, over --max-failure-rate 0.2)" in line
  assert (out / "metadata.json").exists()  # the split is published; the run says it failed
  assert build(path, out, "--max-failure-rate", "0.2") == cli.EXIT_FAILED  # up to date: still
  error_line(capsys)
  assert build(path, out, "--max-failure-rate", "0.25") == 0
  with pytest.raises(SystemExit) as exit_:
    build(path, out, "--max-failure-rate", "1.5")
  assert exit_.value.code == cli.EXIT_USAGE
  assert "not a rate between 0 and 1" in error_line(capsys)


HOLD = """
import sys
from impax.pipelines import lock
with lock.locked(sys.argv[1], "impax build (a test's)"):
  print("held", flush=True)
  sys.stdin.read()
"""


@contextlib.contextmanager
def held_by_another_process(output):
  holder = subprocess.Popen([sys.executable, "-c", HOLD, str(output)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
  try:
    assert holder.stdout.readline() == b"held\n"
    yield holder
  finally:
    holder.kill()
    holder.wait()


def test_one_build_at_a_time_and_a_killed_builds_lock_is_taken_over(images, tmp_path, capsys,
                                                                     caplog):
  path = manifest(images / "two.jsonl", [good(0), good(1)])
  out = tmp_path / "out"
  with held_by_another_process(out) as holder:
    assert build(path, out) == cli.EXIT_LOCKED
    line = error_line(capsys)
    assert f"{out} is being built by impax build (a test's) on host " in line
    assert f"pid {holder.pid}, since " in line
    assert not (out / "metadata.json").exists()
    holder.send_signal(signal.SIGKILL)  # killed: its lock file stays, with its name
    holder.wait()
    assert (out / lock.LOCK_NAME).exists()
  assert build(path, out) == 0
  assert f"pid {holder.pid}" in caplog.text and "taking over the lock" in caplog.text
  assert not (out / lock.LOCK_NAME).exists()  # released
  # Within one process the lock is taken once, however often it is asked for.
  with lock.locked(str(out)), lock.locked(str(out) + "/"):
    assert (out / lock.LOCK_NAME).exists()
  assert not (out / lock.LOCK_NAME).exists()


@contextlib.contextmanager
def mounted(*args):
  target = args[-1]
  os.makedirs(target, exist_ok=True)
  subprocess.run(["mount", *args], check=True)
  try:
    yield target
  finally:
    subprocess.run(["umount", "-l", target], check=True)


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a filesystem needs root")


@needs_root
def test_disk_full_is_one_line_naming_the_path_and_a_rerun_resumes(images, tmp_path, capsys):
  big = tmp_path / "big"
  big.mkdir()
  for i in range(40):  # incompressible images: about 40 KB each as stored
    Image.effect_noise((160, 120), 100).convert("RGB").save(big / f"{i}.png")
  lines = [json.dumps({"id": str(i), "image": f"{i}.png", "caption": "noise"}).encode()
           for i in range(40)]
  path = manifest(big / "noise.jsonl", lines)
  with mounted("-t", "tmpfs", "-o", "size=400k", "tmpfs", str(tmp_path / "small")) as small:
    out = os.path.join(small, "out")
    code = cli.main(["build", "jsonl", "--input", str(path), "--output", out, "--quiet",
                     "--image-short-side", "120"])
    assert code == cli.EXIT_DISK_FULL
    line = error_line(capsys)
    assert line.startswith(f"impax: error: no space left on device: {small}") and \
        "Run the same command again to resume" in line
    assert "Traceback" not in capsys.readouterr().err


@needs_root
def test_read_only_output_and_card(images, tmp_path, capsys):
  path = manifest(images / "ro.jsonl", [good(0), good(1)])
  out = tmp_path / "data"
  assert build(path, out) == 0
  capsys.readouterr()
  with mounted("--bind", "-o", "ro", str(out), str(tmp_path / "ro")) as ro:
    assert build(path, os.path.join(ro, "new"), split="test") == cli.EXIT_PERMISSION
    assert error_line(capsys).startswith(f"impax: error: read-only file system: {ro}")
    assert cli.main(["card", ro]) == cli.EXIT_PERMISSION
    line = error_line(capsys)
    assert f"read-only file system: {ro}" in line and "choose another path" in line
    assert cli.main(["card", ro, "--output", str(tmp_path / "card.html")]) == 0


def test_missing_input_and_bad_options_have_their_own_codes(images, tmp_path, capsys):
  assert build(images / "nope.jsonl", tmp_path / "o") == cli.EXIT_MISSING
  assert "nope.jsonl does not exist" in error_line(capsys)
  with pytest.raises(SystemExit) as exit_:
    cli.main(["build", "jsonl", "--input", str(images), "--output", "o", "--bogus"])
  assert exit_.value.code == cli.EXIT_USAGE
  line = error_line(capsys)
  assert "unrecognized arguments: --bogus" in line and "--help" in line
  assert cli.main(["card", str(tmp_path / "no-such-dataset")]) == cli.EXIT_MISSING
  assert "no-such-dataset" in error_line(capsys)


def test_unreachable_store_and_the_traceback_only_with_verbose(images, tmp_path, capsys):
  import socket
  with socket.socket() as sock:  # a loopback port where nothing listens
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
  path = manifest(images / "store.jsonl", [good(0)])
  argv = ["build", "jsonl", "--input", str(path), "--output", "s3://bucket/out", "--quiet",
          "--", f"--s3_endpoint_url=http://127.0.0.1:{port}", "--s3_access_key_id=k",
          "--s3_secret_access_key=s", "--s3_region_name=us-east-1"]
  assert cli.main(argv) == cli.EXIT_STORE
  captured = capsys.readouterr().err
  assert "Traceback" not in captured
  line = [x for x in captured.splitlines() if x.startswith("impax: error:")]
  assert line == [f"impax: error: cannot reach the S3 endpoint for s3://bucket/out (Could not "
                  f'connect to the endpoint URL: "http://127.0.0.1:{port}/bucket"): check '
                  "AWS_ENDPOINT_URL or --s3_endpoint_url, and the network"]
  assert cli.main(["--verbose", *argv]) == cli.EXIT_STORE
  assert "Traceback" in capsys.readouterr().err


@needs_root
def test_permission_denied_as_another_user(images, tmp_path_factory):
  """As a user who may not write the output's folder (root may write anywhere)."""
  import shutil
  import tempfile
  shared = tempfile.mkdtemp(prefix="impax-perm-")
  try:
    os.chmod(shared, 0o755)
    for name in ("0.png", "1.png"):
      shutil.copy(images / name, shared)
    path = manifest(__import__("pathlib").Path(shared) / "m.jsonl", [good(0), good(1)])
    os.chmod(path, 0o644)
    home = os.path.join(shared, "home")
    os.mkdir(home)
    os.chown(home, 65534, 65534)
    output = os.path.join(shared, "out")  # its folder is root's, 0755
    done = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m",
         "impax.cli", "build", "jsonl", "--input", str(path), "--output", output, "--quiet"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "HOME": home},
        cwd=shared)
    assert done.returncode == cli.EXIT_PERMISSION, done.stderr
    lines = [x for x in done.stderr.splitlines() if x.startswith("impax:")]
    assert lines == [f"impax: error: permission denied: {output}: give this user write access "
                     "there, or choose another path. Run the same command again to resume: "
                     "finished shards and examples are kept."], done.stderr
  finally:
    shutil.rmtree(shared)
