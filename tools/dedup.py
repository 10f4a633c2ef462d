"""Duplicates and test-set leakage, from the fingerprints the build stores in every record.

    found = dedup.find([dedup.read(prepared.open_dataset("out"))], threshold=10)
    found.groups      # [[Member, ...], ...]: the same clip more than once
    dedup.leaks(train_records, eval_records)   # training records that are in the evaluation set

Two records are the same example when their exact fingerprints (sha256 of the
media bytes read, with the clip's bounds) are equal, or when their perceptual
fingerprints (pipelines/media.py) of the same kind (video, image or audio: a
record's first of these) are close:

- video and image: its whole frame's 64-bit DCT hash within `threshold` bits
  of either of the other's two (whole, centre), so a small crop still matches
  (a video built before format 4 has the whole frame's alone);
- audio: one 64-bit value per 32 ms (the mel bands near the frame's peak);
  aligned at their best shift, the bits that differ are at most AUDIO_DISTANCE
  of the bits set in either (Jaccard distance), over an overlap of at least
  half the longer clip. A trimmed clip is the original shifted.
Groups are the connected components of that relation (union-find).

Nothing compares all pairs, and memory is bounded whatever the groups' sizes
(200,000 copies of one placeholder image are one group): records with equal
sha256, and records with equal perceptual fingerprints, are joined as classes
first, so a class is searched once, by its first record; candidate pairs are
compared and joined a bounded batch at a time (time still grows with the square
of a cluster's distinct near fingerprints).

Near hashes are found with multi-index hashing: the 64 bits are cut into 4
blocks of 16, and by pigeonhole two hashes within k bits agree within k // 4
bits on some block; each block is an index (a bucket per 16-bit value), probed
with every key within that radius. Sounds are candidates when they share one
frame value exactly (an inverted index; values that more than AUDIO_COMMON
distinct sounds share, such as one steady tone, are left out of it); only
candidates are aligned.
"""

import dataclasses
import itertools
import json
import os
from collections.abc import Iterable, Sequence

import numpy as np

from impax.datasets import prepared, records

KINDS = ("video", "image", "audio")  # a record's perceptual fingerprint: its first of these
DEFAULT_THRESHOLD = 10  # bits of 64; re-encodes differ in a few, different clips in ~20 or more
BLOCKS = 4  # 16-bit blocks of the multi-index
AUDIO_DISTANCE = 0.25  # re-encoded and trimmed sounds align within ~0.17, different ones ~0.35 or more
AUDIO_COMMON = 64  # a frame value more distinct sounds than this share is no evidence
REPORT_GROUPS = 20  # groups listed in metadata.json; the report lists all
REPORT_IDS = 20  # ids listed of each of those groups (6,000 copies of one image would be 6,000)
CANDIDATES = 1 << 19  # pairs compared at a time: about 50 MB of arrays


class DedupError(ValueError):
  """Fingerprints or a report that cannot be used; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Member:
  dataset: str  # as the user named it
  split: str
  id: str
  position: int  # in the split: what the loader skips

  def to_json(self) -> dict:
    return {"dataset": self.dataset, "split": self.split, "id": self.id, "position": self.position}


@dataclasses.dataclass
class Fingerprints:
  """The fingerprints of a set of records, one row each; row i's perceptual values are
  values[starts[i]:starts[i + 1]] (video one hash, image two, audio one per frame)."""
  members: list[Member]
  sha256: list[str]
  kind: np.ndarray  # int8: index into KINDS, -1 without a perceptual fingerprint
  values: np.ndarray  # uint64, all rows' values concatenated
  starts: np.ndarray  # int64 [rows + 1]

  def __len__(self) -> int:
    return len(self.members)

  def of(self, row: int) -> np.ndarray:
    return self.values[self.starts[row]:self.starts[row + 1]]

  @classmethod
  def from_lists(cls, members: list[Member], sha256: list[str], kind: Sequence[int],
                 values: Sequence[Sequence[int]]) -> "Fingerprints":
    """From one list of (signed or unsigned) 64-bit values per row."""
    counts = np.array([len(v) for v in values], np.int64)
    flat = np.array([x & 0xFFFFFFFFFFFFFFFF for v in values for x in v], np.uint64)
    return cls(members, sha256, np.array(kind, np.int8), flat,
               np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))

  @classmethod
  def concat(cls, parts: Sequence["Fingerprints"]) -> "Fingerprints":
    counts = np.concatenate([np.diff(p.starts) for p in parts] or [np.zeros(0, np.int64)])
    return cls([m for p in parts for m in p.members], [s for p in parts for s in p.sha256],
               np.concatenate([p.kind for p in parts] or [np.zeros(0, np.int8)]),
               np.concatenate([p.values for p in parts] or [np.zeros(0, np.uint64)]),
               np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))


def of_records(found: Iterable[records.Record], dataset: str, split: str) -> Fingerprints:
  """Fingerprints from records, in split order."""
  members, shas, kinds, values = [], [], [], []
  for position, record in enumerate(found):
    fingerprints = record.fingerprints
    if fingerprints is None:
      raise DedupError(f"record {record.id!r} of {dataset} split {split!r} has no fingerprints: "
                       "rebuild it with fingerprints on (the default; --fingerprints true)")
    members.append(Member(dataset, split, record.id, position))
    shas.append(fingerprints.sha256)
    kind = next((i for i, k in enumerate(KINDS) if getattr(fingerprints, k)), -1)
    kinds.append(kind)
    values.append(getattr(fingerprints, KINDS[kind]) if kind >= 0 else [])
  return Fingerprints.from_lists(members, shas, kinds, values)


def read_shards(paths: Sequence[str], dataset: str, split: str) -> Fingerprints:
  """The fingerprints of the records of these shards (local files), in order."""
  return of_records((records.Record.parse(data) for path in paths
                     for _, data in prepared.read_shard(path)), dataset, split)


def read(dataset: prepared.PreparedDataset, name: str | None = None,
         splits: Sequence[str] | None = None) -> Fingerprints:
  """The fingerprints of a prepared dataset's splits (default: all), named `name`; local or
  remote, as the dataset reads its records."""
  name = name or dataset.root
  return Fingerprints.concat([
      of_records((records.Record.parse(data) for _, data in dataset.records(s)), name, s)
      for s in (splits or sorted(dataset.metadata.splits))])


# -- near pairs: multi-index hashing ------------------------------------------


def _flip_masks(bits: int, radius: int) -> np.ndarray:
  masks = [0]
  for r in range(1, radius + 1):
    masks += [sum(1 << b for b in c) for c in itertools.combinations(range(bits), r)]
  return np.array(masks, np.uint64)


def popcount(x: np.ndarray) -> np.ndarray:
  return np.bitwise_count(x.astype(np.uint64))


def near_chunks(hashes: np.ndarray, threshold: int, queries: np.ndarray | None = None,
                budget: int = CANDIDATES):
  """Yields (query rows, hash rows) of pairs within `threshold` bits, `budget` candidates
  at a time, so memory stays bounded however many hashes share a bucket. Every pair
  comes at least once (a pair close on two blocks, twice); query < row when `queries`
  is None (the hashes against themselves)."""
  hashes = np.asarray(hashes, np.uint64)
  own = queries is None
  queries = hashes if own else np.asarray(queries, np.uint64)
  masks = _flip_masks(64 // BLOCKS, threshold // BLOCKS)
  for block in range(BLOCKS):
    shift = np.uint64(block * 16)
    keys = ((hashes >> shift) & np.uint64(0xFFFF)).astype(np.int64)
    order = np.argsort(keys, kind="stable")
    starts = np.searchsorted(keys[order], np.arange((1 << 16) + 1))
    qkeys = ((queries >> shift) & np.uint64(0xFFFF))
    for mask in masks:
      probe = (qkeys ^ mask).astype(np.int64)
      lo = starts[probe]
      ends = np.cumsum(starts[probe + 1] - lo)  # candidates of queries up to each
      # Candidate k is query q's (k - ends[q - 1])-th: a slice of k is a slice of pairs.
      for first in range(0, int(ends[-1]) if len(ends) else 0, budget):
        k = np.arange(first, min(first + budget, int(ends[-1])))
        q = np.searchsorted(ends, k, side="right")
        h = order[lo[q] + k - np.where(q > 0, ends[q - 1], 0)]
        keep = popcount(queries[q] ^ hashes[h]) <= threshold
        if own:
          keep &= q < h
        yield q[keep], h[keep]


def near_pairs(hashes: np.ndarray, threshold: int, queries: np.ndarray | None = None
               ) -> np.ndarray:
  """[n, 2] (query row, hash row) of every pair within `threshold` bits, each pair once
  (query < row) when `queries` is None (the hashes against themselves). As many as
  there are pairs: groups use near_chunks, whose memory is bounded."""
  found = [np.stack(pair, 1) for pair in near_chunks(hashes, threshold, queries)]
  if not found:
    return np.zeros((0, 2), np.int64)
  return np.unique(np.concatenate(found), axis=0)


def brute_force_pairs(hashes: np.ndarray, threshold: int) -> np.ndarray:
  """All pairs within `threshold` bits by comparing every pair: the benchmark's baseline."""
  hashes = np.asarray(hashes, np.uint64)
  found = []
  for i in range(len(hashes) - 1):
    j = np.flatnonzero(popcount(hashes[i + 1:] ^ hashes[i]) <= threshold) + i + 1
    found.append(np.stack([np.full(len(j), i), j], 1))
  return np.concatenate(found) if found else np.zeros((0, 2), np.int64)


def _gather(fp: Fingerprints, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(the values of these rows, concatenated; for each, its index into `rows`)."""
  counts = np.diff(fp.starts)[rows]
  offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
  return fp.values[np.repeat(fp.starts[rows], counts) + offsets], np.repeat(np.arange(len(rows)), counts)


def _hash_chunks(fp: Fingerprints, rows: np.ndarray, threshold: int):
  """Yields (a, b), pairs of `rows` (video or image) whose first hash is within `threshold`
  bits of any hash of the other, a bounded number at a time."""
  firsts = fp.values[fp.starts[rows]]
  if (np.diff(fp.starts)[rows] == 1).all():
    for q, h in near_chunks(firsts, threshold):
      yield rows[q], rows[h]
    return
  values, owner = _gather(fp, rows)
  for q, h in near_chunks(values, threshold, firsts):
    h = owner[h]
    keep = q != h
    yield rows[q[keep]], rows[h[keep]]


def aligned_distance(a: np.ndarray, b: np.ndarray) -> float:
  """Two audio fingerprints' Jaccard distance (bits differing / bits set in either) at
  their best shift, overlapping by at least half the longer; 1.0 when nothing does."""
  # Frame i of a against frame j of b is on diagonal j - i: a shift's sums are a diagonal's.
  diagonal = (np.arange(len(b))[None, :] - np.arange(len(a))[:, None]).ravel() + len(a) - 1
  size = len(a) + len(b) - 1
  differ = np.bincount(diagonal, popcount(a[:, None] ^ b[None, :]).ravel(), size)
  union = np.bincount(diagonal, popcount(a[:, None] | b[None, :]).ravel(), size)
  overlap = np.minimum(np.arange(1, size + 1), np.arange(size, 0, -1))
  overlap = np.minimum(overlap, min(len(a), len(b)))
  ok = (overlap >= (max(len(a), len(b)) + 1) // 2) & (union > 0)
  return float((differ[ok] / union[ok]).min()) if ok.any() else 1.0


def _audio_pairs(fp: Fingerprints, rows: np.ndarray) -> np.ndarray:
  """Pairs of `rows` (audio) that share a frame value and align within AUDIO_DISTANCE."""
  values, owner = _gather(fp, rows)
  keep = values != 0  # a quiet frame
  values, owner = values[keep], owner[keep]
  order = np.lexsort((owner, values))
  values, owner = values[order], owner[order]
  distinct = np.ones(len(values), bool)
  distinct[1:] = (values[1:] != values[:-1]) | (owner[1:] != owner[:-1])
  values, owner = values[distinct], owner[distinct]  # each (value, record) once
  bounds = np.r_[np.flatnonzero(np.r_[True, values[1:] != values[:-1]]), len(values)]
  candidates = set()
  for lo, hi in zip(bounds[:-1], bounds[1:]):
    if 2 <= hi - lo <= AUDIO_COMMON:
      candidates.update(itertools.combinations(owner[lo:hi].tolist(), 2))
  found = [(rows[a], rows[b]) for a, b in sorted(candidates)
           if aligned_distance(fp.of(rows[a]), fp.of(rows[b])) <= AUDIO_DISTANCE]
  return np.array(found, np.int64).reshape(-1, 2)


def _near_chunks(fp: Fingerprints, rows: np.ndarray, threshold: int):
  """Yields (a, b), pairs of `rows` whose perceptual fingerprints of the same kind are close,
  a bounded number at a time; each close pair at least once."""
  for kind in range(len(KINDS)):
    of_kind = rows[fp.kind[rows] == kind]
    if len(of_kind) < 2:
      continue
    if KINDS[kind] == "audio":
      pairs = _audio_pairs(fp, of_kind)
      yield pairs[:, 0], pairs[:, 1]
    else:
      yield from _hash_chunks(fp, of_kind, threshold)


# -- groups -------------------------------------------------------------------


def _class_of(keys: Iterable) -> np.ndarray:
  """Each key's class: equal keys one class, numbered in order of first appearance."""
  ids = {}
  return np.fromiter((ids.setdefault(k, len(ids)) for k in keys), np.int64)


def _firsts(class_of: np.ndarray) -> np.ndarray:
  """Each class's first row."""
  return np.unique(class_of, return_index=True)[1]


def _perceptual_classes(fp: Fingerprints) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(each row's class of equal perceptual fingerprints, each class's first row, whether
  a class is close to itself). Equal fingerprints have the same near records, so only
  a class's first row is searched: a thousand copies of one image are one query."""
  class_of = _class_of((int(fp.kind[i]), fp.of(i).tobytes()) for i in range(len(fp)))
  firsts = _firsts(class_of)
  kinds = fp.kind[firsts]
  itself = (kinds >= 0) & (kinds != KINDS.index("audio"))  # a hash is 0 bits from itself
  for c in np.flatnonzero(kinds == KINDS.index("audio")):  # silence is no evidence
    itself[c] = aligned_distance(fp.of(firsts[c]), fp.of(firsts[c])) <= AUDIO_DISTANCE
  return class_of, firsts, itself


class _Components:
  """Union-find over rows, on arrays: a batch of pairs is joined at once, and each
  component's root is its first row."""

  def __init__(self, n: int):
    self.parent = np.arange(n)

  def roots(self, rows: np.ndarray | None = None) -> np.ndarray:
    while not np.array_equal(up := self.parent[self.parent], self.parent):
      self.parent = up  # pointer jumping: a path halves each time
    return self.parent if rows is None else self.parent[rows]

  def join(self, a: np.ndarray, b: np.ndarray):
    while len(a):
      ra, rb = self.roots(a), self.roots(b)
      apart = ra != rb
      a, b, ra, rb = a[apart], b[apart], ra[apart], rb[apart]
      # Each later root hangs under the first it meets; pairs still apart go round again.
      np.minimum.at(self.parent, np.maximum(ra, rb), np.minimum(ra, rb))


NOUNS = {"video": "video", "image": "image", "audio": "sound"}


def _describe_group(kinds: np.ndarray, copies: np.ndarray) -> str:
  """A group in a few words, from its members' kinds and its byte-identical sets' sizes."""
  kind = int(kinds[0]) if (kinds == kinds[0]).all() else -1
  noun = NOUNS[KINDS[kind]] if kind >= 0 else "example"
  size = int(copies.sum())
  if len(copies) == 1:
    return f"{size:,} copies of one {noun}"
  identical = f", {int(copies.max()):,} byte-identical" if copies.max() > 1 else ""
  return f"{size:,} copies of one {noun} in {len(copies):,} versions{identical}"


@dataclasses.dataclass
class Found:
  groups: list[list[Member]]  # each: two or more records of one example, in input order
  exact_groups: int  # groups of equal sha256
  near_groups: int  # groups whose members are not all byte-identical
  descriptions: list[str]  # each group's in a few words: "6,000 copies of one image"

  @property
  def records_in_groups(self) -> int:
    return sum(len(g) for g in self.groups)

  def summary(self, limit: int = REPORT_GROUPS, ids: int = REPORT_IDS) -> dict:
    """What metadata.json's Split.duplicates holds."""
    return {"exact_groups": self.exact_groups, "near_groups": self.near_groups,
            "records_in_groups": self.records_in_groups,
            "groups": [[m.id for m in g[:ids]] for g in self.groups[:limit]],
            "sizes": [len(g) for g in self.groups[:limit]],
            "descriptions": self.descriptions[:limit]}


def find(parts: Sequence[Fingerprints], threshold: int = DEFAULT_THRESHOLD) -> Found:
  """Duplicate groups among all the records given, within and across datasets and splits.
  Memory is bounded whatever the groups' sizes: byte-identical and perceptually equal
  records are joined by class, and only one row a class is searched for near ones."""
  fp = Fingerprints.concat(parts)
  rows = np.arange(len(fp))
  components = _Components(len(fp))
  exact = _class_of(fp.sha256)
  components.join(rows, _firsts(exact)[exact])
  perceptual, firsts, itself = _perceptual_classes(fp)
  joined = itself[perceptual]
  components.join(rows[joined], firsts[perceptual][joined])
  for a, b in _near_chunks(fp, firsts, threshold):
    components.join(a, b)

  roots = components.roots()
  order = np.argsort(roots, kind="stable")  # by first member, each in input order
  bounds = np.flatnonzero(np.r_[True, roots[order][1:] != roots[order][:-1], True])
  groups, descriptions, near_groups = [], [], 0
  for lo, hi in zip(bounds[:-1], bounds[1:]):
    if hi - lo > 1:
      group = order[lo:hi]
      copies = np.unique(exact[group], return_counts=True)[1]
      near_groups += len(copies) > 1
      groups.append([fp.members[i] for i in group])
      descriptions.append(_describe_group(fp.kind[group], copies))
  exact_groups = int((np.bincount(exact, minlength=1) > 1).sum())
  return Found(groups, exact_groups, near_groups, descriptions)


def split_summary(shard_paths: Sequence[str], split: str) -> dict | None:
  """metadata.json's Split.duplicates of a split's shards (local files); None when their
  records have no fingerprints (built with fingerprints off)."""
  try:
    fp = read_shards(shard_paths, "", split)
  except DedupError:
    return None
  return find([fp]).summary()


def leaks(train: Fingerprints, evaluation: Fingerprints, threshold: int = DEFAULT_THRESHOLD
          ) -> list[tuple[Member, list[Member]]]:
  """Training records that duplicate an evaluation record, each with what it matches."""
  matches = {}
  by_sha = {}
  for j, sha in enumerate(evaluation.sha256):
    by_sha.setdefault(sha, []).append(j)
  for i, sha in enumerate(train.sha256):
    for j in by_sha.get(sha, ()):
      matches.setdefault(i, set()).add(j)
  # Near ones by class of equal fingerprints, as in find: a class's pairs are its rows'.
  fp = Fingerprints.concat([train, evaluation])
  n = len(train)
  perceptual, firsts, itself = _perceptual_classes(fp)
  in_train = np.zeros(len(firsts), bool)
  in_train[perceptual[:n]] = True
  in_evaluation = np.zeros(len(firsts), bool)
  in_evaluation[perceptual[n:]] = True
  both = np.flatnonzero(itself & in_train & in_evaluation)
  close = [np.stack([both, both], 1)]  # (training class, evaluation class)
  for a, b in _near_chunks(fp, firsts, threshold):
    a, b = perceptual[a], perceptual[b]
    for t, e in ((a, b), (b, a)):
      keep = in_train[t] & in_evaluation[e]
      close.append(np.unique(np.stack([t[keep], e[keep]], 1), axis=0))
  rows_of = {}
  for row, c in enumerate(perceptual.tolist()):
    rows_of.setdefault(c, []).append(row)
  for t, e in np.unique(np.concatenate(close), axis=0).tolist():
    matched = [j - n for j in rows_of[e] if j >= n]
    for i in rows_of[t]:
      if i < n:
        matches.setdefault(i, set()).update(matched)
  return [(train.members[i], [evaluation.members[j] for j in sorted(matches[i])])
          for i in sorted(matches)]


def report(found: Found, leaked: list[tuple[Member, list[Member]]] | None,
           threshold: int, datasets: Sequence[str], against: Sequence[str]) -> dict:
  """The JSON report `impax dedup --json` writes and `Task.exclude` reads."""
  out = {"threshold": threshold, "datasets": list(datasets), "against": list(against),
         "exact_groups": found.exact_groups, "near_groups": found.near_groups,
         "records_in_groups": found.records_in_groups,
         "groups": [[m.to_json() for m in g] for g in found.groups],
         "descriptions": found.descriptions}
  if leaked is not None:
    out["leaks"] = [{**m.to_json(), "matches": [x.to_json() for x in ms]} for m, ms in leaked]
  return out


def describe(found: Found, leaked: list[tuple[Member, list[Member]]] | None, total: int,
             threshold: int, shown: int = 10) -> str:
  """The readable summary `impax dedup` prints: each group's first `shown` members."""
  lines = [f"{total} records, threshold {threshold} bits: {len(found.groups)} duplicate groups "
           f"({found.exact_groups} exact, {found.near_groups} near) holding "
           f"{found.records_in_groups} records"]
  for g, about in zip(found.groups[:shown], found.descriptions):
    more = f", ... {len(g) - shown:,} more" if len(g) > shown else ""
    lines.append(f"  {about}: " + ", ".join(f"{m.dataset}:{m.split}:{m.id}" for m in g[:shown])
                 + more)
  if len(found.groups) > shown:
    lines.append(f"  ... {len(found.groups) - shown} more (write them all with --json)")
  if leaked is not None:
    lines.append(f"{len(leaked)} training records duplicate the evaluation set (leaks)")
    for m, ms in leaked[:shown]:
      lines.append(f"  {m.dataset}:{m.split}:{m.id} = "
                   + ", ".join(f"{x.dataset}:{x.split}:{x.id}" for x in ms))
    if len(leaked) > shown:
      lines.append(f"  ... {len(leaked) - shown} more (write them all with --json)")
  return "\n".join(lines)


# -- impax dedup ------------------------------------------------------------------


def parse_selector(text: str) -> tuple[str, tuple[str, ...] | None]:
  """`DIR` (every split) or `DIR:SPLIT[,SPLIT...]` -> (DIR, splits or None). A colon
  before the last slash belongs to the path (gs://bucket/x)."""
  path, colon, splits = text.rpartition(":")
  if not colon or "/" in splits or not splits or not path:
    return text, None
  return path, tuple(s for s in splits.split(",") if s)


def _read_selected(text: str) -> Fingerprints:
  root, splits = parse_selector(text)
  dataset = prepared.open_dataset(root, check_counts=False)
  unknown = [s for s in splits or () if s not in dataset.metadata.splits]
  if unknown:
    raise DedupError(f"{text}: {root} has no split {', '.join(map(repr, unknown))} (it has "
                     f"{', '.join(sorted(dataset.metadata.splits))})")
  return read(dataset, root, splits)


def dedup(datasets: Sequence[str], *, against: Sequence[str] = (),
          threshold: int | None = None) -> dict:
  """Finds duplicates within datasets and, with `against`, their leaks into evaluation data.

      import impax
      report = impax.dedup(["data/videos:train"], against=["data/videos:test"])
      report["leaks"]        # each train record that is also in test, with its copies
      # Task(..., exclude=PATH) takes the report written as JSON: its leaks are never read

  Each dataset is `DIR` or `DIR:SPLIT[,SPLIT]` (local or gs://, s3://). Returns the report
  `impax dedup --json` writes (report()), its one-paragraph summary under "summary".
  """
  threshold = DEFAULT_THRESHOLD if threshold is None else threshold
  if not 0 <= threshold < 32:
    raise DedupError(f"--threshold {threshold}: give a number of bits from 0 to 31")
  parts = [_read_selected(d) for d in datasets]
  evaluation = [_read_selected(d) for d in against]
  sides = [{(os.path.realpath(m.dataset), m.split) for p in side for m in p.members}
           for side in (parts, evaluation)]
  if both := sorted(sides[0] & sides[1]):
    raise DedupError(
        "these splits are on both sides of --against, so every record would leak into itself: "
        + ", ".join(f"{d}:{s}" for d, s in both)
        + "; name the splits, e.g. `impax dedup DIR:train --against DIR:test`")
  found = find(parts + evaluation, threshold)
  leaked = leaks(Fingerprints.concat(parts), Fingerprints.concat(evaluation),
                 threshold) if against else None
  return {**report(found, leaked, threshold, datasets, against),
          "summary": describe(found, leaked, sum(map(len, parts + evaluation)), threshold)}


def main(datasets: Sequence[str], *, against: Sequence[str] = (), json_path: str | None = None,
         threshold: int | None = None) -> int:
  """`impax dedup`: prints the summary, writes the report; 0 (finding duplicates is no error).
  Each dataset is `DIR` or `DIR:SPLIT[,SPLIT]`, so a folder's train split can be checked
  against its own test split."""
  found = dedup(datasets, against=against, threshold=threshold)
  summary = found.pop("summary")
  print(summary)
  if json_path:
    with open(json_path, "w") as f:
      json.dump(found, f, indent=2)
    print(f"report: {json_path}")
  return 0
