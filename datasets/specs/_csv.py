"""What the CSV-like specs share: decoding a line, its fields, a header's columns."""

import csv
import json

from impax.datasets import files, registry


class LineError(Exception):
  """A line that cannot be used; the message names the line, the field and what to do."""


def text(number: int, raw: bytes) -> str:
  try:
    return raw.decode("utf-8").rstrip("\r\n")
  except UnicodeDecodeError as e:
    raise LineError(f"line {number} is not valid UTF-8 ({e.reason} at byte {e.start})") from None


def fields(number: int, raw: bytes, **dialect) -> list[str]:
  try:
    return next(csv.reader([text(number, raw)], strict=True, **dialect), [])
  except csv.Error as e:
    raise LineError(f"line {number} is not valid CSV: {e}") from None


def row(number: int, raw: bytes, columns: dict[str, int], hint: str = "") -> list[str] | None:
  """A data line's fields, one per header column; None for a blank line."""
  values = fields(number, raw)
  if not values or not "".join(values).strip():
    return None
  if len(values) != len(columns):
    raise LineError(f"line {number} has {len(values)} fields, the header {len(columns)}" + hint)
  return values


def columns(path: str, header: list[bytes], required: tuple[str, ...], example: str) -> dict[str, int]:
  """{column name: position} from a CSV's header line; refuses a header that lacks one."""
  if not header:
    raise ValueError(f"{path} is empty: expected a header line like {example}")
  try:
    names = [n.strip() for n in fields(1, header[0])]
  except LineError as e:
    raise ValueError(f"{path}:1: {e}") from None
  missing = [n for n in required if n not in names]
  if missing:
    raise ValueError(f"{path}:1: the header has no column {', '.join(missing)} (found "
                     f"{','.join(names)}): is this the right file? The header must be like {example}")
  return {n: i for i, n in enumerate(names)}


def bad(path: str, number: int, error: str, id_: str = "") -> registry.BadEntry:
  return registry.BadEntry(number - 1, f"{path}:{number}", error, id_)


def load_json(path: str) -> object:
  if not files.exists(path):
    raise FileNotFoundError(path)
  try:
    with files.open(path, decompress=True) as f:
      return json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path} is not valid JSON: {e}") from None
