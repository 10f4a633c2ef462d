"""`imagefolder`: images sorted into one folder per class, `ROOT/<class>/<file>`.

`--input` is ROOT (a local folder, or a gs:// or s3:// prefix). Every file two
levels down is an example labelled by its folder's name; examples are ordered by
path. Hidden files (.DS_Store) are skipped; a file elsewhere (in ROOT itself, or
deeper) is a failure that says where it should be.
"""

import os

from impax.datasets import files, registry


def read(path: str):
  root = path.rstrip("/") if "://" in path else os.path.abspath(path)
  found = sorted(f.path for f in files.match(files.join(root, "**")))
  index = 0
  for file in found:
    relative = file[len(root) + 1:] if file.startswith(root + "/") else file
    parts = relative.split("/")
    if any(p.startswith(".") for p in parts):
      continue
    if len(parts) != 2:
      yield registry.BadEntry(index, file, f"{relative} is not in a class folder: put each "
                              f"image in {root}/<class>/<file>", relative)
    else:
      yield registry.Entry(index=index, source=file, id=relative, media={"image": file},
                           labels=(parts[0],))
    index += 1


def check(path: str, split: str):
  if not files.match(files.join(path.rstrip("/"), "*", "*"), limit=1):
    raise ValueError(f"{path} holds no <class>/<file>: an image folder holds one folder of "
                     "images per class")


SPEC = registry.register(registry.DatasetSpec(
    name="imagefolder", read=read, check=check,
    description="ROOT/<class>/<file>: one folder of images per class."))
