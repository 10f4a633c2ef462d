"""Files, local or remote (gs://, s3://): the one place impax.datasets and impax.tools join
paths, open, test and list files.

    files.join(root, "metadata.json")     # os.path.join on a disk, "/" in a URI
    with files.open(path) as f: data = f.read()
    files.exists(path), files.sizes(paths), files.match(pattern), files.sha256(path)

A local path is read with Python's own calls; a gs:// or s3:// file is read,
tested and sized through the loader's own clients (datasets/remote.py: the
store's standard environment, retried), so the tools read a bucket as training
does. Listing (`match`) and decompressing by file name (`open(...,
decompress=True)`) are Beam's FileSystems on every path (imported only then: it
is heavy, and a training host never needs it), so a corpus lists and reads the
same on a disk and in a bucket.
"""

import builtins
import collections
import dataclasses
import hashlib
import os

from impax.datasets import remote

_CHUNK = 1 << 20


def is_remote(path: str) -> bool:
  return "://" in path


def join(base: str, *parts: str) -> str:
  return "/".join([base.rstrip("/"), *parts]) if is_remote(base) else os.path.join(base, *parts)


def _beam():
  from apache_beam.io.filesystems import FileSystems  # heavy: remote paths and listings only
  return FileSystems


# The store's standard environment holds no credentials: a build's launcher may still hold
# them as Beam's pipeline options (--s3_access_key_id, ...), which Beam's FileSystems use.
_NO_CREDENTIALS = ("NoCredentialsError", "DefaultCredentialsError")


def _client_or_beam(client_call, beam_call):
  try:
    return client_call()
  except Exception as e:
    if type(e).__name__ in _NO_CREDENTIALS:
      return beam_call()
    raise


def _beam_open(path: str):
  from apache_beam.io.filesystem import CompressionTypes
  return _beam().open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def open(path: str, *, decompress: bool = False):  # noqa: A001 (the module's verb)
  """A binary file to read. `decompress`: by the name's extension (.gz, .bz2, ...), as Beam does."""
  if decompress:
    return _beam().open(path)
  if remote.is_remote(path):
    return _client_or_beam(lambda: remote.open_object(path), lambda: _beam_open(path))
  if is_remote(path):
    return _beam_open(path)
  return builtins.open(path, "rb")


def read(path: str) -> bytes:
  with open(path) as f:
    return f.read()


def sha256(path: str, copy_to=None) -> str:
  """The sha256 (hex) of a file's bytes, streamed; `copy_to`, a binary file, gets them too.
  The build records it of every shard and given file; `impax verify` checks it."""
  digest = hashlib.sha256()
  with open(path) as f:
    while chunk := f.read(_CHUNK):
      digest.update(chunk)
      if copy_to is not None:
        copy_to.write(chunk)
  return digest.hexdigest()


def exists(path: str) -> bool:
  if remote.is_remote(path):
    return _client_or_beam(lambda: remote.size(path) is not None, lambda: _beam().exists(path))
  return _beam().exists(path) if is_remote(path) else os.path.exists(path)


def sizes(paths: list[str]) -> dict[str, int | None]:
  """{path: size in bytes, or None where no file is}; remote paths in one listing a folder."""
  found = {p: os.path.getsize(p) if os.path.isfile(p) else None
           for p in paths if not is_remote(p)}
  folders = collections.defaultdict(list)
  for p in paths:
    if remote.is_remote(p):
      folders[p.rpartition("/")[0]].append(p)
  others = [p for p in paths if is_remote(p) and not remote.is_remote(p)]
  for folder, inside in folders.items():
    try:
      listed = remote.sizes(folder)
    except Exception as e:
      if type(e).__name__ not in _NO_CREDENTIALS:
        raise
      others += inside
      continue
    found.update({p: listed.get(p.rpartition("/")[2]) for p in inside})
  if others:
    found.update({p: (m.metadata_list[0].size_in_bytes if m.metadata_list else None)
                  for p, m in zip(others, _beam().match(others))})
  return {p: found[p] for p in paths}


@dataclasses.dataclass(frozen=True)
class Found:
  path: str
  size: int
  modified: float  # seconds since the epoch


def match(pattern: str, limit: int | None = None) -> list[Found]:
  """The files a glob matches (`**` crosses folders), in the filesystem's order."""
  result = _beam().match([pattern], limits=None if limit is None else [limit])[0]
  return [Found(m.path, m.size_in_bytes, m.last_updated_in_seconds) for m in result.metadata_list]
