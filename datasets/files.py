"""Files, local or remote (gs://, s3://): the one place impax.datasets and impax.tools join
paths, open, test and list files.

    files.join(root, "metadata.json")     # os.path.join on a disk, "/" in a URI
    with files.open(path) as f: data = f.read()
    files.exists(path), files.sizes(paths), files.match(pattern), files.sha256(path)

A local path is read with Python's own calls; a URI goes through Beam's
FileSystems, imported only then (it is heavy, and a training host reading a
local dataset never needs it). Listing (`match`) and decompressing by file
name (`open(..., decompress=True)`) are Beam's on every path, so a corpus lists
and reads the same on a disk and in a bucket.
"""

import builtins
import dataclasses
import hashlib
import os

_CHUNK = 1 << 20


def is_remote(path: str) -> bool:
  return "://" in path


def join(base: str, *parts: str) -> str:
  return "/".join([base.rstrip("/"), *parts]) if is_remote(base) else os.path.join(base, *parts)


def _beam():
  from apache_beam.io.filesystems import FileSystems  # heavy: remote paths and listings only
  return FileSystems


def open(path: str, *, decompress: bool = False):  # noqa: A001 (the module's verb)
  """A binary file to read. `decompress`: by the name's extension (.gz, .bz2, ...), as Beam does."""
  if decompress:
    return _beam().open(path)
  if is_remote(path):
    from apache_beam.io.filesystem import CompressionTypes
    return _beam().open(path, compression_type=CompressionTypes.UNCOMPRESSED)
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
  return _beam().exists(path) if is_remote(path) else os.path.exists(path)


def sizes(paths: list[str]) -> dict[str, int | None]:
  """{path: size in bytes, or None where no file is}; remote paths in one listing call."""
  if not paths:
    return {}
  if not any(map(is_remote, paths)):
    return {p: os.path.getsize(p) if os.path.isfile(p) else None for p in paths}
  return {p: (m.metadata_list[0].size_in_bytes if m.metadata_list else None)
          for p, m in zip(paths, _beam().match(paths))}


@dataclasses.dataclass(frozen=True)
class Found:
  path: str
  size: int
  modified: float  # seconds since the epoch


def match(pattern: str, limit: int | None = None) -> list[Found]:
  """The files a glob matches (`**` crosses folders), in the filesystem's order."""
  result = _beam().match([pattern], limits=None if limit is None else [limit])[0]
  return [Found(m.path, m.size_in_bytes, m.last_updated_in_seconds) for m in result.metadata_list]
