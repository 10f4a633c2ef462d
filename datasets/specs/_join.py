"""What the JSON specs with separate caption records share (COCO's annotations,
MSR-VTT's sentences): joining the captions to their media by id."""

from impax.datasets import registry


def captions_by_id(path: str, field: str, records: list, *, id_key: str, id_type: type,
                   known: set, media_field: str, first_index: int, requirement: str):
  """Yields a BadEntry for each of `records` (the file's `field` list) that is
  malformed or names an id not in `known`; returns {id: [caption, ...]}, in order.

  Used as `captions = yield from captions_by_id(...)`. A bad record's index is
  `first_index` (the number of media) + its position; `requirement` ends the
  message "<field>[j] must have ...".
  """
  captions: dict = {}
  for j, r in enumerate(records):
    source = f"{path}:{field}[{j}]"
    if not (isinstance(r, dict) and isinstance(r.get(id_key), id_type)
            and isinstance(r.get("caption"), str)):
      yield registry.BadEntry(first_index + j, source, f"{field}[{j}] must have {requirement}")
    elif r[id_key] not in known:
      yield registry.BadEntry(first_index + j, source, f"{field}[{j}] names {id_key} "
                              f"{r[id_key]!r}, which is not in '{media_field}'", str(r[id_key]))
    else:
      captions.setdefault(r[id_key], []).append(r["caption"])
  return captions
