"""The web corpora's metadata as released: CC3M's and CC12M's TSVs, WebVid's CSV and
LAION/DataComp-style Parquet. A URL is kept as the media path, as written; header and
column checks refuse the wrong file before a build; a bad row is a failure naming its
file and line or row; Parquet rows are numbered in the input's order across row groups
and files, whichever worker reads them. Each format also builds from local files."""

import json
import os
import subprocess

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image

from impax.datasets import registry
from impax.pipelines import build, read
from impax.pipelines.tools import ffmpeg_binary

SMALL = {"video_short_side": 32, "image_short_side": 32, "video_fps": 4.0, "vocab_size": 64}


def entries(spec: str, path, split: str = "train") -> list:
  return list(registry.get(spec).read_entries(str(path), split))


def good(items) -> list:
  return [e for e in items if isinstance(e, registry.Entry)]


def bad(items) -> list:
  return [e for e in items if isinstance(e, registry.BadEntry)]


def run_build(spec, input_path, output, **settings):
  plan = build.prepare(spec, str(input_path), str(output), "train", ({**SMALL, **settings},))
  summary = build.run(plan, workers=1, progress=False)
  with open(os.path.join(output, "metadata.json")) as f:
    meta = json.load(f)
  with open(os.path.join(output, "failures-train.jsonl")) as f:
    failures = [json.loads(line) for line in f]
  return summary, meta, failures


def read_ids(output, meta) -> list[str]:
  from array_record.python.array_record_module import ArrayRecordReader
  from impax.datasets import records
  ids = []
  for shard in meta["splits"]["train"]["shards"]:
    reader = ArrayRecordReader(os.path.join(output, shard["path"]))
    for record in reader.read_all():
      ids.append(records.Example.FromString(record).features.feature["id"].bytes_list.value[0].decode())
    reader.close()
  return ids


def test_the_web_formats_are_registered():
  for name in ("cc3m", "cc12m", "webvid", "parquet"):
    assert name in registry.names() and registry.get(name).description


# -- cc3m and cc12m -------------------------------------------------------------


def test_cc3m_as_released_keeps_each_url_as_written(tmp_path):
  tsv = tmp_path / "Train_GCC-training.tsv"
  tsv.write_text("a very typical bus station\thttp://example.com/a%20b.jpg?w=640&h=480\n"
                 "sierra leone runner\thttps://example.com/x.png\n"
                 "\n"
                 "no url\t\n"
                 "a\tb\tc\n")
  registry.get("cc3m").check_input(str(tsv))
  found = entries("cc3m", tsv)
  assert [(e.index, e.id, e.media, e.captions) for e in good(found)] == [
      (0, "http://example.com/a%20b.jpg?w=640&h=480",
       {"image": "http://example.com/a%20b.jpg?w=640&h=480"}, ("a very typical bus station",)),
      (1, "https://example.com/x.png", {"image": "https://example.com/x.png"},
       ("sierra leone runner",))]
  assert [(e.source, e.error) for e in bad(found)] == [
      (f"{tsv}:4", "line 4: the image URL or path (field 2) is empty"),
      (f"{tsv}:5", "line 5 has 3 tab-separated fields, expected 2: caption<TAB>image URL or "
                   "path (a caption may not hold a tab)")]


def test_cc12m_reads_url_then_caption(tmp_path):
  tsv = tmp_path / "cc12m.tsv"
  tsv.write_text("https://example.com/1.jpg\t<PERSON> at the beach\n"
                 "images/2.jpg\ta red tile\n"
                 "https://example.com/3.jpg\t\n")
  registry.get("cc12m").check_input(str(tsv))
  found = entries("cc12m", tsv)
  assert [(e.id, e.media["image"], e.captions) for e in good(found)] == [
      ("https://example.com/1.jpg", "https://example.com/1.jpg", ("<PERSON> at the beach",)),
      ("images/2.jpg", str(tmp_path / "images" / "2.jpg"), ("a red tile",))]
  assert bad(found)[0].error == "line 3: the caption (field 2) is empty"


def test_a_tsv_in_the_other_order_is_refused(tmp_path):
  cc12m = tmp_path / "cc12m.tsv"
  cc12m.write_text("\nhttps://example.com/1.jpg\ta dog on a beach\n")
  with pytest.raises(ValueError, match=r"cc12m.tsv:2: .* looks like cc12m's url<TAB>caption: "
                                       "build it with cc12m"):
    registry.get("cc3m").check_input(str(cc12m))
  cc3m = tmp_path / "cc3m.tsv"
  cc3m.write_text("a dog on a beach\thttps://example.com/1.jpg\n")
  with pytest.raises(ValueError, match="build it with cc3m"):
    registry.get("cc12m").check_input(str(cc3m))
  with pytest.raises(build.BuildError, match="build it with cc12m"):  # before anything runs
    build.prepare("cc3m", str(cc12m), str(tmp_path / "out"))


# -- webvid -------------------------------------------------------------------

WEBVID_HEADER = "videoid,contentUrl,duration,page_dir,name\n"


def test_webvid_csv_as_released(tmp_path):
  csv = tmp_path / "results_2M_val.csv"
  csv.write_text(
      WEBVID_HEADER
      + '1066674784,https://example.com/videos/1066674784/preview/stock.mp4,PT00H00M22S,'
        '1066672234_1066679999,"Beautiful young woman, drinking coffee"\n'
      + "21179416,clips/21179416.mp4,PT00H00M11S,006001_006050,Aerial shot\n"
      + "99,,PT00H00M11S,d,no video\n"
      + "100,https://example.com/100.mp4,PT00H00M11S,d,\n"
      + "1 0,https://example.com/1.mp4,PT00H00M11S,d,a name\n"
      + "101,https://example.com/101.mp4,PT00H00M11S,d,a name, with a comma\n")
  registry.get("webvid").check_input(str(csv))
  found = entries("webvid", csv)
  assert [(e.index, e.id, e.media, e.captions) for e in good(found)] == [
      (1, "1066674784", {"video": "https://example.com/videos/1066674784/preview/stock.mp4"},
       ("Beautiful young woman, drinking coffee",)),
      (2, "21179416", {"video": str(tmp_path / "clips" / "21179416.mp4")}, ("Aerial shot",))]
  assert [e.error for e in bad(found)] == [
      "line 4: contentUrl (the video) is empty",
      "line 5: name (the caption) is empty",
      "line 6: videoid '1 0' must be a video id like 21179416",
      "line 7 has 6 fields, the header 5: quote a name that holds a comma"]
  assert [e.source for e in bad(found)][0] == f"{csv}:4"


def test_webvid_header_names_the_missing_columns(tmp_path):
  csv = tmp_path / "results.csv"
  csv.write_text("videoid,url,duration,page_dir,caption\n1,https://example.com/1.mp4,x,y,z\n")
  with pytest.raises(ValueError, match=r"results.csv:1: the header has no column contentUrl, name"):
    registry.get("webvid").check_input(str(csv))
  (tmp_path / "empty.csv").write_text("")
  with pytest.raises(ValueError, match="is empty: expected a header line like videoid,contentUrl"):
    registry.get("webvid").check_input(str(tmp_path / "empty.csv"))


# -- parquet ------------------------------------------------------------------


def laion(rows: int, start: int = 0) -> pa.Table:
  """LAION's columns (URL, TEXT, ...); every 5th row lacks its URL, every 7th its caption."""
  return pa.table({
      "SAMPLE_ID": list(range(start, start + rows)),
      "URL": [None if (start + i) % 5 == 4 else f"https://example.com/{start + i}.jpg"
              for i in range(rows)],
      "TEXT": [None if (start + i) % 7 == 6 else f"photo {start + i}" for i in range(rows)],
      "WIDTH": [640] * rows,
  })


def test_parquet_guesses_laion_and_datacomp_columns(tmp_path):
  pq.write_table(laion(3), tmp_path / "laion.parquet")
  pq.write_table(pa.table({"uid": ["ab12"], "url": ["http://example.com/a.png"],
                           "text": ["a cat"], "original_width": [300]}), tmp_path / "datacomp.parquet")
  assert [(e.id, e.media, e.captions) for e in entries("parquet", tmp_path / "laion.parquet")] == [
      (f"laion.parquet:{i}", {"image": f"https://example.com/{i}.jpg"}, (f"photo {i}",))
      for i in range(3)]
  assert [(e.id, e.source, e.media) for e in entries("parquet", tmp_path / "datacomp.parquet")] == [
      ("datacomp.parquet:0", f"{tmp_path / 'datacomp.parquet'}:0",
       {"image": "http://example.com/a.png"})]


def test_parquet_refuses_what_it_cannot_read(tmp_path):
  pq.write_table(pa.table({"link": ["x"], "caption": ["y"]}), tmp_path / "a.parquet")
  with pytest.raises(ValueError, match=r"no url column \(looked for url in any case; found link, "
                                       r"caption\): name it in a spec file"):
    registry.get("parquet").check_input(str(tmp_path / "a.parquet"))
  pq.write_table(pa.table({"url": ["x"], "caption": ["y"], "TEXT": ["z"]}), tmp_path / "b.parquet")
  with pytest.raises(ValueError, match="more than one caption column"):
    registry.get("parquet").check_input(str(tmp_path / "b.parquet"))
  (tmp_path / "c.parquet").write_text("url,caption\n")
  with pytest.raises(ValueError, match="c.parquet is not a Parquet file"):
    registry.get("parquet").check_input(str(tmp_path / "c.parquet"))
  (tmp_path / "none").mkdir()
  (tmp_path / "none" / "README").write_text("")
  with pytest.raises(ValueError, match="holds no .parquet file"):
    registry.get("parquet").check_input(str(tmp_path / "none"))


def write_folder(root) -> str:
  """Two files of several row groups (one empty), beside a file that is not Parquet."""
  (root / "meta" / "more").mkdir(parents=True)
  pq.write_table(laion(10), root / "meta" / "part-00000.parquet", row_group_size=4)
  pq.write_table(laion(7, start=10), root / "meta" / "more" / "part-00001.parquet", row_group_size=3)
  pq.write_table(laion(0), root / "meta" / "part-00002.parquet")
  (root / "meta" / "_SUCCESS").write_text("")
  return str(root / "meta")


def test_parquet_rows_are_numbered_across_row_groups_and_files(tmp_path):
  folder = write_folder(tmp_path)
  spec = registry.get("parquet")
  assert [(os.path.relpath(f, folder), g, n) for (f, g), n in spec.parts.find(folder, "train")] == [
      ("more/part-00001.parquet", 0, 3), ("more/part-00001.parquet", 1, 3),
      ("more/part-00001.parquet", 2, 1), ("part-00000.parquet", 0, 4),
      ("part-00000.parquet", 1, 4), ("part-00000.parquet", 2, 2)]
  found = entries("parquet", folder)
  assert [e.index for e in found] == list(range(17))  # contiguous, in path order
  ids = [e.id for e in found]
  assert ids[:3] == ["more/part-00001.parquet:0", "more/part-00001.parquet:1",
                     "more/part-00001.parquet:2"]
  assert ids[7:] == [f"part-00000.parquet:{r}" for r in range(10)]
  first_file = {e.id: e for e in found[:7]}
  assert first_file["more/part-00001.parquet:5"].media == {"image": "https://example.com/15.jpg"}
  assert [(os.path.relpath(e.source, folder), e.error) for e in bad(found)] == [
      ("more/part-00001.parquet:3", "row 3: the caption (TEXT) is empty or not a string"),
      ("more/part-00001.parquet:4", "row 4: the URL (URL) is empty or not a string"),
      ("part-00000.parquet:4", "row 4: the URL (URL) is empty or not a string"),
      ("part-00000.parquet:6", "row 6: the caption (TEXT) is empty or not a string"),
      ("part-00000.parquet:9", "row 9: the URL (URL) is empty or not a string")]
  assert entries("parquet", folder) == found  # deterministic
  assert read.max_entries(folder, spec, within=None) == 17


def comparable(e) -> tuple:
  return (type(e).__name__, e.index, e.source, e.id, getattr(e, "error", None),
          tuple(sorted(getattr(e, "media", {}).items())))


def test_parquet_row_groups_read_on_workers_give_the_sequential_entries(tmp_path):
  folder = write_folder(tmp_path)
  spec_file = tmp_path / "laion_ids.py"  # a spec file travels to the workers as its text
  spec_file.write_text("from impax.datasets.specs import parquet\n"
                       "SPEC = parquet.spec('laion_ids', url='URL', caption='TEXT', id='SAMPLE_ID')\n")
  for name, source in (("parquet", None), ("laion_ids", spec_file.read_text())):
    expected = [comparable(e) for e in registry.resolve(name, source).read_entries(folder)]
    options = PipelineOptions(["--runner=DirectRunner", "--direct_running_mode=multi_threading",
                               "--direct_num_workers=2"])
    with beam.Pipeline(options=options) as p:
      assert_that(p | read.ReadEntries(folder, name, source, "train") | beam.Map(comparable),
                  equal_to(expected))
  assert [e.id for e in good(registry.resolve("laion_ids", spec_file.read_text())
                             .read_entries(folder))][:2] == ["10", "11"]


def test_parquet_options_name_columns_clip_bounds_and_video(tmp_path):
  from impax.datasets.specs import parquet
  pq.write_table(pa.table({
      "videoid": ["v1", "v2", "v3", "v4", None],
      "contentUrl": ["https://example.com/1.mp4", "clips/2.mp4", "x", "y", "z"],
      "name": ["one", "two", "three", "four", "five"],
      "t0": [1.5, None, 5.0, float("nan"), 0.0],
      "t1": [4, 3.0, 2.0, 1.0, 1.0],
  }), tmp_path / "videos.parquet")
  spec = parquet.spec("videos", url="contentUrl", caption="name", id="videoid", start="t0",
                      end="t1", medium="video")
  found = list(spec.read_entries(str(tmp_path / "videos.parquet")))
  assert [(e.id, e.media, e.start, e.end) for e in good(found)] == [
      ("v1", {"video": "https://example.com/1.mp4"}, 1.5, 4.0),
      ("v2", {"video": str(tmp_path / "clips" / "2.mp4")}, None, 3.0)]
  assert [e.error for e in bad(found)] == [
      "row 2: end (2) must be after start (5)",
      "row 3: start (t0) must be a finite, non-negative number of seconds, got nan",
      "row 4: the id (videoid) is empty or not a string"]
  with pytest.raises(ValueError, match=r"no column 'TEXT' \(the caption; found videoid"):
    parquet.spec("x", url="contentUrl", caption="TEXT").check_input(str(tmp_path / "videos.parquet"))
  with pytest.raises(ValueError, match="medium='photo' must be one of"):
    parquet.spec("x", medium="photo")


# -- builds from local files ------------------------------------------------------


@pytest.fixture(scope="module")
def media(tmp_path_factory):
  d = tmp_path_factory.mktemp("media")
  subprocess.run([ffmpeg_binary(), "-v", "error", "-y", "-f", "lavfi", "-i",
                  "testsrc=size=64x48:rate=8", "-t", "1", "-c:v", "libx264", "-pix_fmt", "yuv420p",
                  str(d / "clip.mp4")], check=True, timeout=60)
  Image.new("RGB", (48, 40), (200, 30, 30)).save(d / "red.jpg")
  Image.new("RGB", (40, 48), (30, 30, 200)).save(d / "blue.png")
  return d


def test_cc12m_build_with_a_duplicate_url(media, tmp_path):
  (tmp_path / "cc12m.tsv").write_text(f"{media / 'red.jpg'}\ta red tile\n"
                                      f"{media / 'blue.png'}\ta blue tile\n"
                                      f"{media / 'red.jpg'}\tthe same red tile again\n")
  summary, meta, failures = run_build("cc12m", tmp_path / "cc12m.tsv", tmp_path / "out")
  assert (summary["num_examples"], summary["num_failed"]) == (2, 1)
  assert read_ids(tmp_path / "out", meta) == [str(media / "red.jpg"), str(media / "blue.png")]
  assert failures[0]["stage"] == "duplicate"
  assert f"first used at {tmp_path / 'cc12m.tsv'}:1" in failures[0]["error"]


def test_webvid_build(media, tmp_path):
  (tmp_path / "clips").mkdir()
  os.symlink(media / "clip.mp4", tmp_path / "clips" / "21179416.mp4")
  (tmp_path / "results.csv").write_text(
      WEBVID_HEADER + "21179416,clips/21179416.mp4,PT00H00M01S,006001_006050,test pattern\n"
      "5,clips/5.mp4,PT00H00M01S,006001_006050,gone\n")
  summary, meta, failures = run_build("webvid", tmp_path / "results.csv", tmp_path / "out")
  assert (summary["num_examples"], summary["num_failed"]) == (1, 1)
  assert read_ids(tmp_path / "out", meta) == ["21179416"]
  assert failures[0]["stage"] == "read"
  assert {t["name"] for t in meta["tasks"]} == {"video_text"}


def test_parquet_build_of_several_row_groups(media, tmp_path):
  images = [str(media / "red.jpg"), str(media / "blue.png"), None, "missing.jpg", str(media / "red.jpg")]
  pq.write_table(pa.table({"url": images, "caption": [f"tile {i}" for i in range(5)]}),
                 tmp_path / "meta.parquet", row_group_size=2)
  summary, meta, failures = run_build("parquet", tmp_path / "meta.parquet", tmp_path / "out")
  assert (summary["num_examples"], summary["num_failed"]) == (3, 2)
  assert read_ids(tmp_path / "out", meta) == ["meta.parquet:0", "meta.parquet:1", "meta.parquet:4"]
  assert [(f["stage"], f["source"].rsplit("/", 1)[-1]) for f in failures] == [
      ("manifest", "meta.parquet:2"), ("read", "meta.parquet:3")]
  assert {t["name"] for t in meta["tasks"]} == {"image_text"}


# -- builds from URLs on a loopback server ------------------------------------------------


@pytest.fixture(scope="module")
def server(media):
  """media's files at http://127.0.0.1:PORT/<name>, from a thread of this process."""
  import functools
  import threading
  from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

  class Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
      pass

  httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(media)))
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  yield f"http://127.0.0.1:{httpd.server_address[1]}"
  httpd.shutdown()
  httpd.server_close()


def test_cc3m_builds_from_urls(server, tmp_path):
  (tmp_path / "Train_GCC-training.tsv").write_text(
      f"a red tile\t{server}/red.jpg\na blue tile\t{server}/blue.png\n"
      f"gone\t{server}/missing.jpg\n")
  summary, meta, failures = run_build("cc3m", tmp_path / "Train_GCC-training.tsv", tmp_path / "out",
                                      download_retries=0)
  assert (summary["num_examples"], summary["num_failed"]) == (2, 1)
  assert read_ids(tmp_path / "out", meta) == [f"{server}/red.jpg", f"{server}/blue.png"]
  assert (failures[0]["stage"], failures[0]["error"]) == ("download", "HTTP 404")


def test_webvid_builds_from_urls(server, tmp_path):
  (tmp_path / "results.csv").write_text(
      WEBVID_HEADER + f"21179416,{server}/clip.mp4,PT00H00M01S,006001_006050,test pattern\n")
  summary, meta, _ = run_build("webvid", tmp_path / "results.csv", tmp_path / "out")
  assert (summary["num_examples"], summary["num_failed"]) == (1, 0)
  assert read_ids(tmp_path / "out", meta) == ["21179416"]


def test_parquet_builds_from_urls(server, tmp_path):
  pq.write_table(pa.table({"URL": [f"{server}/red.jpg", f"{server}/blue.png", f"{server}/red.jpg"],
                           "TEXT": ["red", "blue", "red again"]}),
                 tmp_path / "laion.parquet", row_group_size=2)
  summary, meta, _ = run_build("parquet", tmp_path / "laion.parquet", tmp_path / "out")
  assert (summary["num_examples"], summary["num_failed"]) == (3, 0)
  assert read_ids(tmp_path / "out", meta) == ["laion.parquet:0", "laion.parquet:1", "laion.parquet:2"]
