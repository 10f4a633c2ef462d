"""Mergeable statistics of a split: numbers as count/sum/min/max, categories as counts."""

import math

MAX_CATEGORIES = 64  # a category with more distinct values keeps the most common


def add_number(stats: dict, name: str, value: float):
  s = stats.setdefault(name, {"count": 0, "sum": 0.0, "min": math.inf, "max": -math.inf})
  s["count"] += 1
  s["sum"] += float(value)
  s["min"] = min(s["min"], float(value))
  s["max"] = max(s["max"], float(value))


def add_category(stats: dict, name: str, value: str):
  counts = stats.setdefault(name, {"counts": {}})["counts"]
  counts[value] = counts.get(value, 0) + 1


def merge(into: dict, other: dict) -> dict:
  for name, s in other.items():
    if "counts" in s:
      for value, n in s["counts"].items():
        counts = into.setdefault(name, {"counts": {}})["counts"]
        counts[value] = counts.get(value, 0) + n
    else:
      t = into.setdefault(name, {"count": 0, "sum": 0.0, "min": math.inf, "max": -math.inf})
      t["count"] += s["count"]
      t["sum"] += s["sum"]
      t["min"] = min(t["min"], s["min"])
      t["max"] = max(t["max"], s["max"])
  return into


def summary(stats: dict) -> dict:
  """The form stored in metadata.json: mean instead of sum, top categories."""
  out = {}
  for name in sorted(stats):
    s = stats[name]
    if "counts" in s:
      top = sorted(s["counts"].items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_CATEGORIES]
      out[name] = dict(top)
    elif s["count"]:
      out[name] = {"count": s["count"], "mean": round(s["sum"] / s["count"], 6),
                   "min": s["min"], "max": s["max"], "total": round(s["sum"], 6)}
  return out
