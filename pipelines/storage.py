"""Files through Beam's FileSystems, so outputs and media may be local, gs:// or s3://.

Writes are atomic: data goes to a temporary name and is renamed into place,
so a reader never sees half a file under its final name. ffmpeg cannot read
gs:// or s3:// URIs, so remote media are staged to a local temporary file
(`local_copy`) that is deleted as soon as the example is decoded.

The object stores' settings (an S3 endpoint, keys; a GCP project) are Beam
pipeline options; `configure` hands them to FileSystems in the launcher, and
the runner hands them to every worker.
"""

import contextlib
import functools
import hashlib
import os
import shutil
import tempfile
import threading
import uuid

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, S3Options

# The object stores' clients come with Beam's optional extras (aws, gcp).
try:
  from apache_beam.io.aws.clients.s3 import boto3_client
except ImportError:
  boto3_client = None
try:
  from apache_beam.internal.gcp import auth
except ImportError:
  auth = None

_RAW = CompressionTypes.UNCOMPRESSED  # never guess compression from a file name


def is_local(path: str) -> bool:
  return "://" not in path


def join(base: str, *parts: str) -> str:
  return os.path.join(base, *parts) if is_local(base) else FileSystems.join(base, *parts)


_patch_lock = threading.Lock()


def patch_beam():
  """Makes Beam's object-store clients cheap to start (the two patches below).

  Idempotent and cheap: `configure` calls it in the launcher, and every DoFn or
  function that reaches an object store on a worker calls it first, since a
  worker is a fresh process that imports this module but never calls `configure`.
  """
  with _patch_lock:  # DoFns of one worker may set up on several threads at once
    _share_s3_clients()
    _no_credential_search_for_a_gcs_emulator()


def _share_s3_clients():
  """Beam's S3 filesystem makes a new boto3 session and client for every call,
  several times per example, and botocore parses its service model anew for
  each (benchmarks/README.md has the cost). Each of Beam's clients (which keep
  per-download state) gets a boto3 client shared by all with the same settings
  instead."""
  if boto3_client is None:
    return
  base = boto3_client.Client
  if boto3_client.boto3 is None or getattr(base, "shared", False):
    return
  names = ("s3_access_key_id", "s3_secret_access_key", "s3_session_token", "s3_endpoint_url",
           "s3_disable_ssl", "s3_region_name", "s3_api_version", "s3_verify")
  cache, lock = {}, threading.Lock()

  class SharedClient(base):
    shared = True

    def __init__(self, options):
      if isinstance(options, PipelineOptions):
        view = options.view_as(S3Options)
        key = tuple(getattr(view, n) for n in names)
      else:
        key = tuple(options.get(n) for n in names)
      with lock:
        if key not in cache:
          super().__init__(options)
          cache[key] = self.client
          return
      self.client = cache[key]
      self._download_request = self._download_stream = None
      self._download_pos = 0

  boto3_client.Client = SharedClient


def _no_credential_search_for_a_gcs_emulator():
  """With STORAGE_EMULATOR_HOST set, google-cloud-storage talks to that emulator
  anonymously, but Beam first looks for Google's default credentials, retrying
  with backoff, in every process before its first gs:// call (benchmarks/README.md
  has the wait). Beam connects anonymously then anyway, so it does so at once."""
  if auth is None:
    return
  search = auth._Credentials._get_service_credentials
  if getattr(search, "emulator_aware", False):
    return

  @functools.wraps(search)
  def credentials(options):
    return None if os.environ.get("STORAGE_EMULATOR_HOST") else search(options)

  credentials.emulator_aware = True
  auth._Credentials._get_service_credentials = staticmethod(credentials)


def open_raw(path: str):
  """A binary, seekable reader of a file on any filesystem."""
  return FileSystems.open(path, compression_type=_RAW)


_options = PipelineOptions([])


def configure(options):
  """Sets the filesystems' options (PipelineOptions) for this process."""
  global _options
  patch_beam()
  FileSystems.set_options(options)
  _options = options


class StoreError(Exception):
  """An object store that cannot be reached, or refuses these credentials."""


def check_store(path: str):
  """Raises StoreError at once when path's bucket cannot be reached or read with the
  configured settings. Beam retries a store's errors with backoff for minutes before it
  gives up; a build or a check asks once, up front, with no retries."""
  scheme, _, rest = path.partition("://")
  bucket = rest.split("/", 1)[0]
  if scheme == "s3" and boto3_client is not None and boto3_client.boto3 is not None:
    import botocore.exceptions  # comes with boto3
    client = boto3_client.Client(_options).client
    try:
      client.head_bucket(Bucket=bucket)
    except botocore.exceptions.NoCredentialsError:
      raise StoreError(f"no credentials for {path}: set AWS_ACCESS_KEY_ID and "
                       "AWS_SECRET_ACCESS_KEY (or --s3_access_key_id and "
                       "--s3_secret_access_key after `--`)") from None
    except botocore.exceptions.EndpointConnectionError as e:
      raise StoreError(f"cannot reach the S3 endpoint for {path} ({e}): check "
                       "AWS_ENDPOINT_URL or --s3_endpoint_url, and the network") from None
    except botocore.exceptions.ClientError as e:
      code = e.response.get("Error", {}).get("Code", "")
      if code in ("404", "NoSuchBucket"):
        raise StoreError(f"bucket {bucket} of {path} does not exist: create it first") from None
      raise StoreError(f"the S3 store refused {path} ({code or e}): check the credentials "
                       "and the bucket's permissions") from None
  elif scheme == "gs":
    from apache_beam.io.gcp import gcsio  # with Beam's gcp extra
    from google.api_core import exceptions as google_errors
    from google.auth import exceptions as auth_errors
    try:
      found = gcsio.GcsIO(pipeline_options=_options).client.lookup_bucket(bucket, timeout=30)
    except auth_errors.DefaultCredentialsError:
      raise StoreError(f"no credentials for {path}: run `gcloud auth application-default "
                       "login` or set GOOGLE_APPLICATION_CREDENTIALS") from None
    except (google_errors.GoogleAPIError, OSError) as e:
      raise StoreError(f"cannot reach or read {path} ({type(e).__name__}: "
                       f"{str(e).splitlines()[0][:200]}): check the credentials, "
                       "STORAGE_EMULATOR_HOST if you use an emulator, and the network") from None
    if found is None:
      raise StoreError(f"bucket {bucket} of {path} does not exist: create it first")


def exists(path: str) -> bool:
  return FileSystems.exists(path)


def is_dir(path: str) -> bool:
  """A folder; on an object store, a prefix that holds files."""
  if is_local(path):
    return os.path.isdir(path)
  pattern = path.rstrip("/") + "/**"
  return bool(FileSystems.match([pattern], limits=[1])[0].metadata_list)


def read(path: str) -> bytes:
  with FileSystems.open(path, compression_type=_RAW) as f:
    return f.read()


def write_atomic(path: str, data: bytes):
  temp = f"{path}.partial-{uuid.uuid4().hex[:8]}"
  with FileSystems.create(temp, compression_type=_RAW) as f:
    f.write(data)
  FileSystems.rename([temp], [path])


def publish(local_file: str, path: str):
  """Moves a finished local file to `path` (any filesystem), atomically."""
  if is_local(path):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    os.replace(local_file, path)
    return
  temp = f"{path}.partial-{uuid.uuid4().hex[:8]}"
  with open(local_file, "rb") as src, FileSystems.create(temp, compression_type=_RAW) as dst:
    shutil.copyfileobj(src, dst, 1 << 22)
  FileSystems.rename([temp], [path])
  os.remove(local_file)


def delete(paths: list[str]):
  paths = [p for p in paths if exists(p)]
  if paths:
    FileSystems.delete(paths)


def glob(pattern: str) -> list[str]:
  return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)


def delete_tree(path: str):
  if is_local(path):
    shutil.rmtree(path, ignore_errors=True)
  else:
    delete(glob(join(path, "**")))


@contextlib.contextmanager
def local_copy(path: str):
  """A local path to the file's bytes, and their sha256; remote files are staged."""
  digest = hashlib.sha256()
  if is_local(path):
    with open(path, "rb") as f:
      while chunk := f.read(1 << 22):
        digest.update(chunk)
    yield path, digest.hexdigest()
    return
  suffix = os.path.splitext(path)[1][:16]
  with tempfile.NamedTemporaryFile(suffix=suffix) as local:
    with FileSystems.open(path, compression_type=_RAW) as f:
      while chunk := f.read(1 << 22):
        digest.update(chunk)
        local.write(chunk)
    local.flush()
    yield local.name, digest.hexdigest()


# Media decoded from their bytes: images. ffmpeg reads a video or a sound from a file, and
# seeks in it (an MP4's index may come last).
IN_MEMORY = ("image",)


@contextlib.contextmanager
def media_body(path: str, medium: str):
  """A media file's body and its sha256: its bytes for a medium IN_MEMORY, else a local path
  to them (local_copy's: a remote file is staged)."""
  if medium not in IN_MEMORY:
    with local_copy(path) as copy:
      yield copy
    return
  if is_local(path):
    with open(path, "rb") as f:
      data = f.read()
  else:
    data = read(path)
  yield data, hashlib.sha256(data).hexdigest()


def local_dir_for(path: str) -> str | None:
  """Where to write a file that will be published to `path`: beside it when local
  (so the final rename is atomic on one filesystem), else the system's temp dir."""
  if is_local(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return os.path.dirname(path)
  return None
