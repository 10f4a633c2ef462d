"""`impax card DIR`: a dataset card, one self-contained HTML page of what a prepared dataset holds.

    impax card demo-output/data/videos     # demo-output/data/videos/card.html and card/*.png

Per split: a contact sheet of sampled frames and images (decoded from the records),
audio as waveform and log-mel pictures, histograms of duration, resolution, fps,
tokens per caption and label frequencies (from the records; the split's statistics
in metadata.json beside them), the failures by stage (downloads by reason) with the
first failed inputs, the duplicates found, and the build's config and lineage. Images
are inline as data: URIs: the page needs no network and no other file; the PNGs are written
beside it for other uses (the build_dataset flow's artifact shows the contact sheets).

Sampling is seeded (by the seed and the split's name) and the page holds no clock
time, so the same dataset and seed give the same bytes.
"""

import base64
import collections
import dataclasses
import html
import io
import json
import os
import zlib
from collections.abc import Mapping

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from impax.datasets import decode, files, metadata, prepared, records
from impax.tools import inspect

matplotlib.use("Agg")  # files only, no display
from matplotlib import pyplot as plt  # noqa: E402  (after the backend is chosen)
from matplotlib.text import Text  # noqa: E402

TILE = 96  # pixels of a contact sheet's square tile
FRAMES_PER_VIDEO = 6  # frames spread over each sampled clip: one row of the sheet
COLUMNS = FRAMES_PER_VIDEO  # images per row of the sheet
AUDIO_SAMPLES = 6  # most sampled clips drawn as waveform and log-mel
FIRST_FAILURES = 10
FIRST_GROUPS = 10
TOP_CATEGORIES = 30  # bars of a resolution or label chart


@dataclasses.dataclass(frozen=True)
class Card:
  html: str  # the page's path
  pngs: tuple[str, ...]  # the pictures written beside it
  contact_sheets: Mapping[str, str]  # {split: its contact sheet's PNG}, splits with pictures


def write_card(directory: str, output: str | None = None, samples: int = 16, seed: int = 0,
               max_records: int = 5000) -> Card:
  """Writes the card of the dataset in `directory` to `output` (default DIR/card.html) and
  its PNGs to the folder beside it named after it (card/); returns what it wrote.

      import impax
      impax.card("data/videos")                       # data/videos/card.html
      impax.card("gs://b/k400", "k400-card.html", samples=32)

  `samples` examples per split go on the contact sheet; the histograms read every record
  of a split up to `max_records`, else a seeded sample of that many.
  """
  if samples < 1 or max_records < 1:
    raise ValueError(f"--samples ({samples}) and max_records ({max_records}) must be at least 1")
  if output is None:
    if files.is_remote(directory):
      raise ValueError(f"{directory} is remote: give the card a local --output PATH")
    output = inspect.card_path(directory)
  dataset = prepared.open_dataset(directory, check_counts=False)
  meta = dataset.metadata
  folder = picture_folder(output)
  os.makedirs(folder, exist_ok=True)
  pngs, sheets, sections = [], {}, []

  def save(name: str, png: bytes) -> str:
    path = os.path.join(folder, name)
    with open(path, "wb") as f:
      f.write(png)
    pngs.append(path)
    return path

  for name, split in meta.splits.items():
    section, pictures = _split_section(dataset, name, split, samples, seed, max_records)
    stem = _file_stem(name)
    for kind, png in pictures.items():
      path = save(f"{stem}-{kind}.png", png)
      if kind == "contact-sheet":
        sheets[name] = path
    sections.append(section)
  with open(output, "w", encoding="utf-8") as f:
    f.write(_page(meta, directory, sections, samples, seed))
  return Card(html=output, pngs=tuple(pngs), contact_sheets=sheets)


def picture_folder(page: str) -> str:
  """Where a card's PNGs go: the folder beside the page named after it (DIR/card/)."""
  return os.path.splitext(page)[0]


# -- reading the records ----------------------------------------------------------


def sample_indices(num_records: int, count: int, seed: int, split: str) -> list[int]:
  """`count` distinct positions of a split, sorted; the same for the same seed and split."""
  if num_records <= count:
    return list(range(num_records))
  rng = np.random.default_rng([seed, zlib.crc32(split.encode())])
  return sorted(int(i) for i in rng.choice(num_records, size=count, replace=False))


def read_records(dataset: prepared.PreparedDataset, split: str, indices: list[int]):
  """Yields (position, record) of the records at the sorted split positions."""
  for position, data in dataset.records(split, indices):
    yield position, records.Record.parse(data)


def record_facts(record: records.Record) -> dict[str, list]:
  """What the histograms count of one record: {quantity: values}."""
  facts = collections.defaultdict(list)
  if video := record.video:
    facts["video duration (s)"].append(video.seconds)
    facts["fps"].append(video.fps)
    facts["resolution (height x width)"].append(f"video {video.height}x{video.width}")
  if audio := record.audio:
    facts["audio duration (s)"].append(audio.seconds)
  if image := record.image:
    facts["resolution (height x width)"].append(f"image {image.height}x{image.width}")
  facts["tokens per caption"].extend(int(n) for n in record.token_lengths)
  facts["label frequencies"].extend(record.label_names)
  return facts


# -- pictures -------------------------------------------------------------------


def _centre_square(height: int, width: int) -> tuple[int, int, int, int]:
  side = min(height, width)
  left, top = (width - side) // 2, (height - side) // 2
  return left, top, left + side, top + side


def tiles(record: records.Record) -> list[np.ndarray]:
  """The sheet's tiles of one record: FRAMES_PER_VIDEO frames spread over a video, or the
  image; uint8 [TILE, TILE, 3] each, the centre square."""
  if video := record.video:
    frames, box = video.frames, _centre_square(*video.shape)
    picks = np.linspace(0, len(frames) - 1, min(FRAMES_PER_VIDEO, len(frames))).round().astype(int)
    return [decode.decode_jpeg(frames[i], box, TILE, TILE, False) for i in picks]
  if image := record.image:
    return [decode.decode_jpeg(image.encoded, _centre_square(*image.shape), TILE, TILE, False)]
  return []


def contact_sheet(examples: list[tuple[int, records.Record]]
                  ) -> tuple[np.ndarray, list[dict]] | None:
  """A grid (uint8 [H, W, 3]): each video a row of its frames, images COLUMNS to a row, each
  example's number in its first tile's corner; and per number what it shows and the
  top-left pixel (y, x) of its first tile. None when no example has pictures."""
  rows, legend = [], []
  for position, record in examples:
    pictures = tiles(record)
    if not pictures:
      continue
    pictures[0] = _numbered(pictures[0], len(legend) + 1)
    is_video = record.video is not None
    if is_video or not rows or rows[-1][0] or len(rows[-1][1]) == COLUMNS:
      rows.append((is_video, []))  # a video has a row of its own
    legend.append({"number": len(legend) + 1, "position": position, "record": record,
                   "tile": (len(rows) - 1, len(rows[-1][1]))})
    rows[-1][1].extend(pictures)
  if not rows:
    return None
  gap = 4
  sheet = np.full((len(rows) * (TILE + gap) + gap, COLUMNS * (TILE + gap) + gap, 3), 255, np.uint8)
  def at(row: int, column: int) -> tuple[int, int]:
    return gap + row * (TILE + gap), gap + column * (TILE + gap)

  for r, (_, pictures) in enumerate(rows):
    for c, tile in enumerate(pictures):
      y, x = at(r, c)
      sheet[y:y + TILE, x:x + TILE] = tile
  for item in legend:
    item["at"] = at(*item.pop("tile"))
  return sheet, legend


def _numbered(tile: np.ndarray, number: int) -> np.ndarray:
  picture = Image.fromarray(tile)
  draw = ImageDraw.Draw(picture)
  font = ImageFont.load_default(size=12)
  text = str(number)
  right, bottom = draw.textbbox((3, 1), text, font=font)[2:]
  draw.rectangle((0, 0, right + 3, bottom + 3), fill=(0, 0, 0))
  draw.text((3, 1), text, fill=(255, 255, 255), font=font)
  return np.asarray(picture)


def _png(array: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format="PNG")
  return buffer.getvalue()


def _figure_png(figure) -> bytes:
  """The figure laid out and drawn, its text as written (see _plain)."""
  _plain(figure)
  figure.tight_layout()
  buffer = io.BytesIO()
  figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
  plt.close(figure)
  return buffer.getvalue()


def _plain(figure):
  """Every text of the figure (titles, tick labels, legends) drawn as plain text: ids,
  labels and captions come from data, and matplotlib would read `money eyes $_$` as
  mathtext and fail to parse it."""
  for text in figure.findobj(Text):
    text.set_parse_math(False)
    text.set_usetex(False)


def audio_picture(examples: list[tuple[int, records.Record]]) -> bytes | None:
  """Waveform and log-mel of the first AUDIO_SAMPLES sampled records with sound, one row
  each; the log-mel is the loader's (decode.log_mel: librosa's filterbank, 128 bins,
  80-7600 Hz, 10 ms hop), so the picture is what an audio task is fed."""
  sounds = [r for _, r in examples if r.audio][:AUDIO_SAMPLES]
  if not sounds:
    return None
  figure, axes = plt.subplots(len(sounds), 2, figsize=(8, 1.5 * len(sounds)), squeeze=False,
                              gridspec_kw={"width_ratios": (1, 1.4)})
  for record, (wave_axis, mel_axis) in zip(sounds, axes):
    rate = record.audio.sample_rate
    wave = record.audio.waveform()
    seconds = len(wave) / rate
    wave_axis.plot(np.arange(len(wave)) / rate, wave, linewidth=0.5, color="#1f5fa8")
    wave_axis.set_xlim(0, seconds)
    wave_axis.set_ylim(-1, 1)
    wave_axis.set_ylabel(record.id[:24], rotation=0, ha="right", va="center",
                         fontsize=8)
    mel_axis.imshow(decode.log_mel(wave, rate).T, origin="lower", aspect="auto", cmap="magma",
                    extent=(0, seconds, 0, decode.MEL_BINS), interpolation="nearest")
    mel_axis.set_ylabel("mel bin", fontsize=8)
  axes[0][0].set_title("waveform", fontsize=9)
  axes[0][1].set_title("log-mel", fontsize=9)
  for axis in axes[-1]:
    axis.set_xlabel("seconds")
  return _figure_png(figure)


def chart(title: str, values: list) -> bytes:
  """A histogram of numbers, or the frequencies of names (the TOP_CATEGORIES most common)."""
  figure, axis = plt.subplots(figsize=(4.4, 2.8))
  if isinstance(values[0], str):
    top = sorted(collections.Counter(values).items(), key=lambda kv: (-kv[1], kv[0]))
    shown = top[:TOP_CATEGORIES]
    axis.barh(range(len(shown)), [n for _, n in shown], color="#4c8c4a")
    axis.set_yticks(range(len(shown)), [name for name, _ in shown], fontsize=7)
    axis.invert_yaxis()
    axis.set_xlabel("records" if title.startswith("resolution") else "labels")
    if len(top) > len(shown):
      title += f" (top {len(shown)} of {len(top)})"
  else:
    axis.hist(values, bins=min(30, max(1, len(set(values)))), color="#1f5fa8")
    axis.set_ylabel("count")
  axis.set_title(title, fontsize=9)
  return _figure_png(figure)


# -- one split ------------------------------------------------------------------


def _split_section(dataset, name: str, split: metadata.Split, samples: int, seed: int,
                   max_records: int) -> tuple[str, dict[str, bytes]]:
  """The split's HTML section and its pictures {kind: PNG}."""
  total = sum(s.num_records for s in split.shards)
  facts = collections.defaultdict(list)
  counted = sample_indices(total, max_records, seed, name)
  for _, record in read_records(dataset, name, counted):
    for key, values in record_facts(record).items():
      facts[key].extend(values)
  chosen = list(read_records(dataset, name, sample_indices(total, samples, seed, name)))
  pictures, parts = {}, [f'<section id="split-{_e(name)}"><h2>Split {_e(name)}</h2>',
                         _split_summary(split, total)]

  parts.append("<h3>Contact sheet</h3>")
  sheet = contact_sheet(chosen)
  if sheet is None:
    parts.append("<p>No frames or images in this split.</p>")
  else:
    array, legend = sheet
    pictures["contact-sheet"] = _png(array)
    parts.append(f"<p>The {len(legend)} with frames or images of {len(chosen)} examples "
                 f"sampled (seed {seed}) of {total}: each video a row of {FRAMES_PER_VIDEO} "
                 f"frames spread over its clip, images {COLUMNS} to a row; the numbers are "
                 "the table's below.</p>")
    parts.append(_img(pictures["contact-sheet"], f"contact sheet of split {name}",
                      "contact-sheet"))
    parts.append(_legend(legend))

  audio = audio_picture(chosen)
  if audio is not None:
    pictures["audio"] = audio
    parts.append("<h3>Audio</h3><p>Waveform and log-mel of sampled clips, by id.</p>")
    parts.append(_img(audio, f"audio of split {name}", "audio"))

  parts.append("<h3>Distributions</h3>")
  parts.append(f"<p>From {'all ' if len(counted) == total else ''}{len(counted)} of {total} "
               "records; the statistics of all records, from metadata.json, below.</p>")
  parts.append('<div class="charts">')
  for title, values in sorted(facts.items()):
    if values:
      kind = "chart-" + "".join(c if c.isalnum() else "-" for c in title.split(" (")[0])
      pictures[kind] = chart(title, values)
      parts.append(_img(pictures[kind], title, "chart"))
  parts.append("</div>")
  parts.append(_statistics(split.statistics))
  parts.append(_failures(dataset.root, split))
  parts.append(_duplicates(split))
  parts.append(_split_lineage(split))
  parts.append("</section>")
  return "\n".join(parts), pictures


def _split_summary(split: metadata.Split, total: int) -> str:
  c = split.composition
  held = ", ".join(f"{n} {what}" for what, n in (
      ("videos", c.video), ("with sound", c.video_with_audio), ("audio clips", c.audio),
      ("images", c.image), ("with captions", c.captions), ("with labels", c.labels)) if n)
  lacking = "".join(f"<li>without {_e(part)}: {len(positions)} records</li>"
                    for part, positions in (split.lacking or {}).items())
  return (f"<p><b>{total}</b> examples ({_e(held) or 'no media'}), <b>{split.num_failed}</b> "
          f"failed, {len(split.shards)} shards, {split.num_bytes / 1e6:.2f} MB.</p>"
          + (f"<ul>{lacking}</ul>" if lacking else ""))


def _legend(legend: list[dict]) -> str:
  rows = []
  for item in legend:
    r = item["record"]
    rows.append(_row(item["number"], item["position"], r.id, r.source, "; ".join(r.label_names),
                     " | ".join(r.captions)))
  return _table(("#", "position", "id", "source", "labels", "captions"), rows, "legend")


def _statistics(statistics: Mapping) -> str:
  numbers, categories = [], []
  for key, value in sorted(statistics.items()):
    if {"count", "mean", "min", "max"} <= set(value):
      numbers.append(_row(key, value["count"], _number(value["mean"]), _number(value["min"]),
                          _number(value["max"])))
    else:
      categories.append(_row(key, ", ".join(f"{k}: {n}" for k, n in value.items())))
  return ("<h3>Statistics (metadata.json)</h3>"
          + _table(("quantity", "records", "mean", "min", "max"), numbers, "statistics")
          + (_table(("category", "counts"), categories, "statistics") if categories else ""))


def _number(x) -> str:
  return f"{x:.4g}" if isinstance(x, float) else str(x)


def _failures(root: str, split: metadata.Split) -> str:
  out = [f"<h3>Failures</h3><p><b>{split.num_failed}</b> inputs failed "
         f"(<code>{_e(split.failures)}</code>).</p>"]
  if not split.num_failed:
    return out[0]
  out.append(_table(("stage", "inputs"),
                    [_row(stage, n) for stage, n in sorted(split.failures_by_stage.items(),
                                                            key=lambda kv: (-kv[1], kv[0]))],
                    "failures-by-stage"))
  downloads = getattr(split, "download_failures_by_reason", None)
  if downloads:  # img2dataset's status table: which URLs failed how
    out.append(_table(("download failure", "inputs"),
                      [_row(reason, n) for reason, n in sorted(downloads.items(),
                                                                key=lambda kv: (-kv[1], kv[0]))],
                      "download-failures"))
  path = files.join(root, split.failures)
  if not os.path.exists(path):
    out.append(f"<p>{_e(path)} is missing: the failed inputs cannot be listed.</p>")
    return "\n".join(out)
  with open(path, encoding="utf-8") as f:
    first = [json.loads(line) for line, _ in zip(f, range(FIRST_FAILURES)) if line.strip()]
  out.append(f"<p>The first {len(first)}:</p>")
  out.append(_table(("source", "id", "stage", "error"),
                    [_row(x.get("source", ""), x.get("id", ""), x.get("stage", ""),
                          x.get("error", "")) for x in first], "failures"))
  return "\n".join(out)


def _duplicates(split: metadata.Split) -> str:
  found = getattr(split, "duplicates", None)
  if found is None:
    return "<h3>Duplicates</h3><p>Not computed for this split.</p>"
  if dataclasses.is_dataclass(found):
    found = dataclasses.asdict(found)
  groups = list(found.get("groups") or ())
  out = ["<h3>Duplicates</h3>", _table(
      ("exact groups", "near groups", "records in groups"),
      [_row(found.get("exact_groups", 0), found.get("near_groups", 0),
            found.get("records_in_groups", 0))], "duplicates")]
  if groups:
    out.append(f"<p>The first {min(len(groups), FIRST_GROUPS)} of {len(groups)} groups "
               "(record ids):</p><ol>")
    # Each group in a few words ("6,000 copies of one image") and its first ids; a
    # split built before impax described them has the ids alone, all of them.
    sizes = found.get("sizes") or [len(g) for g in groups]
    about = found.get("descriptions") or [""] * len(groups)
    for ids, size, words in list(zip(groups, sizes, about))[:FIRST_GROUPS]:
      more = f", ... {size - len(ids):,} more" if size > len(ids) else ""
      shown = ", ".join(map(str, ids)) + more
      out.append(f"<li>{_e(f'{words}: {shown}' if words else shown)}</li>")
    out.append("</ol>")
  return "\n".join(out)


def _split_lineage(split: metadata.Split) -> str:
  rows = [_row("input", split.input), _row("input sha256", split.input_sha256),
          _row("media sha256", split.media_sha256), _row("ffmpeg", split.ffmpeg),
          _row("built", split.created), _row("build seconds", split.build_seconds),
          _row("sharding", json.dumps(dict(split.sharding), sort_keys=True))]
  shards = [_row(s.path, s.num_records, s.num_bytes, getattr(s, "sha256", "") or "")
            for s in split.shards]
  return ("<h3>Lineage of this split</h3>" + _table(("field", "value"), rows, "lineage")
          + _table(("shard", "records", "bytes", "sha256"), shards, "shards"))


# -- the page -------------------------------------------------------------------

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; max-width: 1200px; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 2px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
td, th { border: 1px solid #ddd; padding: 2px 8px; text-align: left; vertical-align: top;
         max-width: 60em; overflow-wrap: anywhere; }
th { background: #f3f3f3; } code { background: #f3f3f3; padding: 0 3px; }
.charts { display: flex; flex-wrap: wrap; gap: 8px; }
img { display: block; margin: 0.5em 0; } nav a { margin-right: 1em; }
"""


def _page(meta: metadata.Metadata, directory: str, sections: list[str], samples: int,
          seed: int) -> str:
  title = f"Dataset card: {meta.name} {meta.version}"
  summary = ", ".join(f"{_e(n)} {s.num_examples} examples ({s.num_failed} failed)"
                      for n, s in meta.splits.items())
  nav = "".join(f'<a href="#split-{_e(n)}">{_e(n)}</a>' for n in meta.splits)
  lineage = _table(("field", "value"), [
      _row("folder", directory), _row("spec", meta.spec), _row("impax", meta.impax_version),
      _row("created", meta.created), _row("config hash", meta.config_hash),
      _row("ArrayRecord options", meta.array_record_options),
      _row("fingerprint", json.dumps(dict(meta.fingerprint), sort_keys=True)),
      *[_row(f"input of {n}", f"{s.input} (sha256 {s.input_sha256})")
        for n, s in meta.splits.items()],
      *[_row(f"ffmpeg of {n}", s.ffmpeg) for n, s in meta.splits.items()]], "dataset-lineage")
  config = _table(("option", "value"), [_row(k, json.dumps(v)) for k, v in
                                        sorted(meta.config.stored().items())], "config")
  tok = meta.tokenizer
  tokenizer = (f"{tok.path}, vocabulary {tok.vocab_size}, sha256 {tok.sha256}, "
               + ("trained on this corpus" if tok.trained else "given")) if tok else "none"
  tasks = _table(("task", "inputs", "objective", "prompt"),
                 [_row(t.name, " + ".join(t.modalities), t.objective, t.prompt or "")
                  for t in meta.tasks], "tasks")
  return "\n".join([
      "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
      '<link rel="icon" href="data:,">',  # no favicon request
      f"<title>{_e(title)}</title><style>{STYLE}</style></head><body>",
      f"<h1>{_e(title)}</h1>",
      f"<p>{_e(directory)}: {summary}. Written by <code>impax card</code> with "
      f"<code>--samples {samples}</code>, seed {seed}.</p>",
      f'<nav>Splits: {nav}<a href="#lineage">lineage</a><a href="#options">options</a>'
      '<a href="#tasks">tasks</a></nav>',
      *sections,
      '<h2 id="lineage">Lineage</h2>', lineage,
      '<h2 id="options">Processing options</h2>', config,
      '<h2 id="tasks">Tasks, labels, tokenizer</h2>', tasks,
      f"<p>{len(meta.labels)} labels: {_e(', '.join(meta.labels[:100]))}"
      f"{' ...' if len(meta.labels) > 100 else ''}</p>",
      f"<p>Tokenizer: {_e(tokenizer)}</p>",
      "</body></html>", ""])


def _e(value) -> str:
  return html.escape(str(value), quote=True)


def _row(*cells) -> list[str]:
  return [_e(c) for c in cells]


def _table(header: tuple[str, ...], rows: list[list[str]], css: str) -> str:
  head = "".join(f"<th>{_e(h)}</th>" for h in header)
  body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
  return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _img(png: bytes, alt: str, css: str) -> str:
  width, height = Image.open(io.BytesIO(png)).size
  return (f'<img class="{css}" alt="{_e(alt)}" width="{width}" height="{height}" '
          f'src="data:image/png;base64,{base64.b64encode(png).decode()}">')


def _file_stem(split: str) -> str:
  return "".join(c if c.isalnum() or c in "-_." else "_" for c in split)
