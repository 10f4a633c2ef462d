"""The dataset card: what it shows of a built corpus with bad inputs, read from its HTML, and
the page as Debian's headless chromium renders it (no console errors, the contact sheet on
screen)."""

import base64
import dataclasses
import html.parser
import io
import json
import os
import subprocess

import matplotlib.text
import numpy as np
import pytest
from PIL import Image

from impax import demo
from impax.cli import main as cli
from impax.datasets import prepared
from impax.tools import card, inspect
from impax.pipelines import build, tools

SAMPLES = 8


class Page(html.parser.HTMLParser):
  """What a reader of the card sees: its images, tables (by class: rows of cell texts) and text."""

  def __init__(self, text: str):
    super().__init__()
    self.images, self.tables, self.links, self.words = [], {}, [], []
    self._table = self._row = self._cell = None
    self.feed(text)

  def handle_starttag(self, tag, attrs):
    attrs = dict(attrs)
    if tag == "img":
      self.images.append(attrs)
    elif tag in ("a", "link", "script", "iframe", "object", "embed"):
      self.links.append((tag, attrs))
    elif tag == "table":
      self._table = self.tables.setdefault(attrs.get("class"), [])
    elif tag == "tr" and self._table is not None:
      self._row = []
      self._table.append(self._row)
    elif tag in ("td", "th") and self._row is not None:
      self._cell = []

  def handle_endtag(self, tag):
    if tag in ("td", "th") and self._cell is not None:
      self._row.append("".join(self._cell))
      self._cell = None
    elif tag == "table":
      self._table = None

  def handle_data(self, data):
    self.words.append(data)
    if self._cell is not None:
      self._cell.append(data)

  @property
  def text(self) -> str:
    return " ".join("".join(self.words).split())

  def image(self, css: str) -> dict:
    (found,) = [i for i in self.images if i.get("class") == css]
    return found

  def rows(self, css: str) -> list[list[str]]:
    """The body rows of the first table of that class (the header row dropped)."""
    return self.tables[css][1:]


def png_of(img: dict) -> bytes:
  prefix = "data:image/png;base64,"
  assert img["src"].startswith(prefix), img["src"][:40]
  return base64.b64decode(img["src"][len(prefix):])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
  """One split of videos (most with sound), images and audio clips, and three bad inputs:
  a missing video whose id looks like HTML, a corrupt video and a line that is not JSON."""
  root = tmp_path_factory.mktemp("card")
  raw = root / "raw"
  manifests = demo.generate(str(raw), videos=6, images=6, audio=4, seconds=1.0, size=48, seed=2)
  lines = []
  for name in ("videos-train", "images-train", "audio-train"):
    with open(manifests[name]) as f:
      lines += f.read().splitlines()
  (raw / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(3000))
  lines += [json.dumps({"id": "<b>missing</b>", "video": "nowhere.mp4", "label": "one"}),
            json.dumps({"id": "corrupt & co", "video": "corrupt.mp4"}),
            "{not json"]
  (raw / "mixed.jsonl").write_text("\n".join(lines) + "\n")
  output = str(root / "mixed")
  plan = build.prepare("jsonl", str(raw / "mixed.jsonl"), output, "train",
                       ({"video_short_side": 48, "image_short_side": 48, "num_shards": 2},))
  build.run(plan, workers=1)
  return output


@pytest.fixture(scope="module")
def written(dataset) -> tuple[str, Page]:
  """The card written by `impax card DIR`: (its path, the parsed page)."""
  assert cli(["card", dataset, "--samples", str(SAMPLES)]) == 0
  path = os.path.join(dataset, "card.html")
  with open(path, encoding="utf-8") as f:
    return path, Page(f.read())


def test_the_card_shows_failures_by_stage_with_the_first_failed_inputs(dataset, written):
  _, page = written
  split = prepared.open_dataset(dataset).split("train")
  assert split.num_failed == 3
  assert sorted(map(tuple, page.rows("failures-by-stage"))) == sorted(
      (stage, str(n)) for stage, n in split.failures_by_stage.items())
  assert {stage for stage, _ in page.rows("failures-by-stage")} == {"read", "video", "manifest"}
  failures = {row[1]: row for row in page.rows("failures")}  # by id
  # the id is shown as written, not taken for markup
  assert failures["<b>missing</b>"][2] == "read" and "nowhere.mp4" in failures["<b>missing</b>"][3]
  assert failures["corrupt & co"][2] == "video" and "corrupt.mp4" in failures["corrupt & co"][3]
  assert any("not valid JSON" in row[3] for row in page.rows("failures"))
  with open(written[0], encoding="utf-8") as f:
    assert "<b>missing</b>" not in f.read()  # escaped
  assert "3 inputs failed (failures-train.jsonl)" in page.text


def test_the_card_shows_the_builds_config_and_lineage(dataset, written):
  _, page = written
  meta = prepared.open_dataset(dataset).metadata
  split = meta.splits["train"]
  lineage = dict(page.rows("dataset-lineage"))
  assert lineage["spec"] == "jsonl" and lineage["impax"] == meta.impax_version
  assert lineage["config hash"] == meta.config_hash
  assert lineage["input of train"] == f"{split.input} (sha256 {split.input_sha256})"
  assert lineage["ffmpeg of train"] == split.ffmpeg and split.ffmpeg.startswith("ffmpeg version")
  of_split = dict(page.rows("lineage"))
  assert of_split["media sha256"] == split.media_sha256
  options = dict(page.rows("config"))
  assert options["video_short_side"] == "48" and options["jpeg_quality"] == "90"
  assert json.loads(of_split["sharding"]) == dict(split.sharding)
  assert split.sharding["num_shards"] == 2
  assert set(options) == set(meta.config.stored())
  assert [row[0] for row in page.rows("shards")] == [s.path for s in split.shards]


def test_the_card_pictures_and_charts_each_split(dataset, written):
  path, page = written
  sheet_png = png_of(page.image("contact-sheet"))
  with open(os.path.join(dataset, "card", "train-contact-sheet.png"), "rb") as f:
    assert f.read() == sheet_png  # the page's picture is the PNG written beside it
  legend = page.rows("legend")
  # every seeded sample with frames or an image, in split order
  data = prepared.open_dataset(dataset)
  pictured = [p for p, r in card.read_records(data, "train", sample_positions(data))
              if r.video or r.image]
  assert [int(row[1]) for row in legend] == pictured and len(pictured) > 1
  assert {row[3].split("/")[0] for row in legend} >= {"videos", "images"}
  assert page.image("audio")["alt"] == "audio of split train"
  charts = {img["alt"] for img in page.images if img.get("class") == "chart"}
  assert charts == {"video duration (s)", "audio duration (s)", "fps", "tokens per caption",
                    "label frequencies", "resolution (height x width)"}
  found = data.split("train").duplicates  # from the build's fingerprints
  assert page.rows("duplicates") == [[str(found[k]) for k in (
      "exact_groups", "near_groups", "records_in_groups")]]
  # self-contained: every picture inline, nothing fetched, no script
  assert all(img["src"].startswith("data:") for img in page.images)
  assert all(attrs["href"].startswith("#" if tag == "a" else "data:")
             for tag, attrs in page.links), page.links


def test_the_contact_sheet_shows_the_records_frames(dataset, written):
  _, page = written
  sheet = np.asarray(Image.open(io.BytesIO(png_of(page.image("contact-sheet")))).convert("RGB"))
  data = prepared.open_dataset(dataset)
  positions = sample_positions(data)
  examples = dict(card.read_records(data, "train", positions))
  _, legend = card.contact_sheet([(p, examples[p]) for p in positions])
  video = next(item for item in legend if item["record"].video)
  assert [row[2] for row in page.rows("legend")] == [item["record"].id for item in legend]
  # the clip's last frame is its row's last tile: decoded here with PIL, centre square
  frames = video["record"].video.frames
  last = Image.open(io.BytesIO(frames[-1])).convert("RGB")
  side = min(last.size)
  left, top = (last.width - side) // 2, (last.height - side) // 2
  expected = np.asarray(last.crop((left, top, left + side, top + side)).resize(
      (card.TILE, card.TILE), Image.BILINEAR), np.float32)
  y, x = video["at"]
  x += (card.FRAMES_PER_VIDEO - 1) * (card.TILE + 4)
  tile = sheet[y:y + card.TILE, x:x + card.TILE].astype(np.float32)
  assert np.abs(tile - expected).mean() < 3  # another frame of the clip differs by 10 or more


def sample_positions(data) -> list[int]:
  return card.sample_indices(data.num_records("train"), SAMPLES, 0, "train")


def test_the_same_dataset_and_seed_give_the_same_card(dataset, written, tmp_path):
  again = card.write_card(dataset, str(tmp_path / "again.html"), samples=SAMPLES)
  with open(written[0], "rb") as a, open(again.html, "rb") as b:
    assert a.read() == b.read()
  for png in again.pngs:
    with open(png, "rb") as a, open(os.path.join(dataset, "card", os.path.basename(png)), "rb") as b:
      assert a.read() == b.read(), png
  assert card.sample_indices(100, 8, 0, "train") == card.sample_indices(100, 8, 0, "train")
  assert card.sample_indices(100, 8, 1, "train") != card.sample_indices(100, 8, 0, "train")


def test_duplicates_are_shown_or_said_to_be_not_computed(dataset):
  split = prepared.open_dataset(dataset).split("train")
  found = {"exact_groups": 1, "near_groups": 2, "records_in_groups": 5,
           "groups": [["video-train-00000", "video-train-00003"], ["<i>x</i>", "y"]]}
  page = Page(card._duplicates(dataclasses.replace(split, duplicates=found)))
  assert page.rows("duplicates") == [["1", "2", "5"]]
  assert "video-train-00000, video-train-00003" in page.text and "<i>x</i>, y" in page.text
  page = Page(card._duplicates(dataclasses.replace(split, duplicates=None)))
  assert "Not computed for this split." in page.text and not page.tables
  # A big group: in a few words and its first ids, not its 6,000.
  found = {"exact_groups": 1, "near_groups": 0, "records_in_groups": 6000,
           "groups": [[f"copy-{i}" for i in range(20)]], "sizes": [6000],
           "descriptions": ["6,000 copies of one image"]}
  page = Page(card._duplicates(dataclasses.replace(split, duplicates=found)))
  assert "6,000 copies of one image: copy-0, copy-1," in page.text
  assert "copy-19, ... 5,980 more" in page.text


DOLLARS = ("money eyes $_$", "$x^2$", r"a\$b")  # mathtext to matplotlib, text to a user


def test_text_from_data_is_drawn_as_written(tmp_path, monkeypatch):
  """Labels, ids and captions with `$` are plain text on every chart: matplotlib would read
  `$_$` as mathtext and fail, and draw `$x^2$` as x squared."""
  raw = tmp_path / "raw"
  raw.mkdir()
  demo_image = "cellauto=s=64x48:rule=110:seed={}"
  lines = []
  for i, label in enumerate(DOLLARS):
    subprocess.run([tools.ffmpeg_binary(), "-y", "-loglevel", "error", "-f", "lavfi", "-i",
                    demo_image.format(i), "-frames:v", "1", str(raw / f"{i}.png")], check=True)
    lines.append({"id": f"image {i}", "image": f"{i}.png", "label": label,
                  "caption": "costs $5, or $10 with $x^2$"})
  subprocess.run([tools.ffmpeg_binary(), "-y", "-loglevel", "error", "-f", "lavfi", "-i",
                  "sine=frequency=440:duration=1", str(raw / "tone.wav")], check=True)
  lines.append({"id": "$_$ tone", "audio": "tone.wav", "label": DOLLARS[0]})
  (raw / "m.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
  output = str(tmp_path / "dollars")
  build.run(build.prepare("jsonl", str(raw / "m.jsonl"), output, "train",
                          ({"image_short_side": 32, "num_shards": 1},)), workers=1)
  drawn = []  # (text, drawn as mathtext or TeX) of every text on every chart
  figure_png = card._figure_png

  def keep_texts(figure):
    png = figure_png(figure)
    drawn.extend((t.get_text(), t.get_parse_math() or t.get_usetex())
                 for t in figure.findobj(matplotlib.text.Text) if t.get_text())
    return png

  monkeypatch.setattr(card, "_figure_png", keep_texts)
  written = card.write_card(output, samples=4)
  texts = dict(drawn)
  assert set(DOLLARS) | {"$_$ tone"} <= set(texts)  # tick labels, the sound's id
  assert not any(texts.values())
  page = Page(open(written.html, encoding="utf-8").read())
  assert all(label in page.text for label in DOLLARS)
  assert "costs $5, or $10 with $x^2$" in page.text
  assert any(img["alt"] == "label frequencies" for img in page.images)


def test_inspect_points_to_the_card(dataset, written, tmp_path, capsys):
  assert cli(["inspect", dataset]) == 0
  assert f"card: {written[0]}" in capsys.readouterr().out
  assert inspect.card_line(str(tmp_path)) == (
      f"  card: none yet; `impax card {tmp_path}` writes {tmp_path}/card.html")
  with pytest.raises(ValueError, match="give the card a local --output PATH"):
    card.write_card("gs://bucket/data")


# -- in a real browser ---------------------------------------------------------

def test_chromium_renders_the_card_with_the_contact_sheet_on_screen(written, browser, tmp_path):
  from selenium.webdriver.common.by import By
  path, page = written
  browser.get(f"file://{path}")
  assert browser.title.startswith("Dataset card: mixed")
  assert browser.get_log("browser") == []  # no console errors, warnings or failed loads
  element = browser.find_element(By.CSS_SELECTOR, "img.contact-sheet")
  assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth",
                                element) > 0
  browser.execute_script("arguments[0].scrollIntoView(true)", element)  # all of it on screen
  shot = np.asarray(Image.open(io.BytesIO(element.screenshot_as_png)).convert("RGB"), np.float32)
  sheet = np.asarray(Image.open(io.BytesIO(png_of(page.image("contact-sheet")))).convert("RGB"),
                     np.float32)
  assert shot.shape == sheet.shape
  assert np.abs(shot - sheet).mean() < 2  # on screen, the pixels of the sheet
  assert shot.std() > 30  # not a blank or uniform region
  # the demo's digits in their colours: several of them show
  pixels = shot.reshape(-1, 3)
  shown = [name for name, rgb in demo.COLOURS.items()
           if (np.linalg.norm(pixels - np.array(rgb, np.float32), axis=1) < 50).sum() >= 30]
  assert len(shown) >= 3, shown

  # The check sees a page that needs a file it does not have.
  broken = tmp_path / "broken.html"
  with open(path, encoding="utf-8") as f:
    broken.write_text(f.read().replace("</body>", '<img src="missing.png"></body>'))
  browser.get(f"file://{broken}")
  assert any("missing.png" in entry["message"] for entry in browser.get_log("browser"))
