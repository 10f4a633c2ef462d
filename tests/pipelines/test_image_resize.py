"""An image's resize filter (image_resize_filter) and the cheaper decodes (issue 30): the
default stores the bytes Pillow's LANCZOS path stored before, the area filter is OpenCV's
INTER_AREA, and simplejpeg's decodes are Pillow's pixels, so fingerprints keep their values."""

import io

import cv2
import numpy as np
import pytest
from PIL import ExifTags, Image, ImageOps

from impax.datasets import prepared, records
from impax.pipelines import build, config as config_lib, media


def jpeg(width, height, *, mode="RGB", orientation=None, **options):
  rng = np.random.default_rng(width * 7919 + height)
  pixels = rng.integers(0, 64, (height, width, 3)) + np.linspace(0, 180, width)[None, :, None]
  image = Image.fromarray(pixels.astype(np.uint8)).convert(mode)
  if orientation:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    options["exif"] = exif.tobytes()
  buf = io.BytesIO()
  image.save(buf, "JPEG", **options)
  return buf.getvalue()


def png(width, height, mode="RGBA"):
  buf = io.BytesIO()
  Image.new(mode, (width, height), (10, 200, 30, 128)).save(buf, "PNG")
  return buf.getvalue()


def pillow_only(data, short_side, shrink):
  """process_image as it was before the filter was a setting: Pillow's draft, load, EXIF
  turn, RGB, then `shrink` (the filter under test) or BICUBIC up."""
  with Image.open(io.BytesIO(data)) as image:
    w, h = image.size
    ratio = short_side / min(w, h)
    size = (max(1, round(w * ratio)), max(1, round(h * ratio)))
    if ratio < 0.5:
      image.draft(None, (size[0] * 2, size[1] * 2))
    image.load()
    if image.getexif().get(ExifTags.Base.Orientation) in (5, 6, 7, 8):
      size = size[::-1]
    image = media._to_rgb(ImageOps.exif_transpose(image))  # transparency on white
  if ratio < 1:
    image = shrink(image, size)
  elif ratio > 1:
    image = image.resize(size, Image.Resampling.BICUBIC)
  buf = io.BytesIO()
  image.save(buf, "JPEG", quality=90)
  return buf.getvalue()


def lanczos(image, size):
  return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def area(image, size):
  return Image.fromarray(cv2.resize(np.asarray(image), size, interpolation=cv2.INTER_AREA))


INPUTS = [jpeg(640, 480), jpeg(640, 480, subsampling=0, quality=75), jpeg(300, 500, progressive=True),
          jpeg(640, 480, mode="L"), jpeg(2560, 1920), jpeg(1100, 700, orientation=6),
          jpeg(640, 480, orientation=3), jpeg(200, 100, mode="CMYK"), jpeg(5, 300), png(640, 480)]


@pytest.mark.parametrize("data", INPUTS)
@pytest.mark.parametrize("short_side", [256, 64, 400])
def test_the_default_filter_stores_the_bytes_of_pillows_lanczos(data, short_side):
  stored, height, width = media.process_image(data, short_side=short_side, jpeg_quality=90)
  assert stored == pillow_only(data, short_side, lanczos)
  assert Image.open(io.BytesIO(stored)).size == (width, height)


@pytest.mark.parametrize("data", INPUTS)
def test_the_area_filter_is_opencvs_inter_area(data):
  stored, height, width = media.process_image(data, short_side=256, jpeg_quality=90,
                                              resize_filter="area")
  assert stored == pillow_only(data, 256, area)
  assert min(height, width) == 256 or min(Image.open(io.BytesIO(data)).size) < 256


def test_the_area_filter_turns_and_caps_as_lanczos_does():
  turned = jpeg(600, 300, orientation=6)  # a camera turned a quarter: stored upright
  assert media.process_image(turned, short_side=150, jpeg_quality=90, resize_filter="area")[1:] == (300, 150)
  buf = io.BytesIO()
  Image.new("L", (70000, 1), 255).save(buf, "PNG")
  _, height, width = media.process_image(buf.getvalue(), short_side=0, jpeg_quality=90,
                                         max_long_side=0, resize_filter="area")
  assert (height, width) == (1, config_lib.JPEG_MAX_SIDE)
  with pytest.raises(ValueError, match="resize_filter 'cubic'"):
    media.process_image(turned, short_side=150, jpeg_quality=90, resize_filter="cubic")


def test_the_filter_is_a_stored_build_setting():
  assert config_lib.resolve({}).image_resize_filter == "lanczos"
  cfg = config_lib.resolve({"image_resize_filter": "area"})
  assert cfg.stored()["image_resize_filter"] == "area"  # another filter, other bytes: hashed
  assert config_lib.resolve({}).image_resize_filter in media.RESIZE_FILTERS


@pytest.mark.parametrize("size", [(640, 480), (8, 8), (9, 17), (2560, 1920), (257, 300), (4000, 300),
                                  (1023, 769), (341, 256)])
@pytest.mark.parametrize("options", [{"quality": 90}, {"subsampling": 0}, {"subsampling": 1},
                                     {"progressive": True}, {"mode": "L"}])
def test_simplejpeg_decodes_pillows_pixels_at_every_dct_scale(size, options):
  data = jpeg(*size, **options)
  for target in (None, (64, 64), (200, 150), (size[0] // 2, size[1] // 2), (size[0] // 5, size[1] // 5)):
    with Image.open(io.BytesIO(data)) as image:
      if target and min(target) > 0:
        image.draft(None, target)
      scale = image.decoderconfig[0] if image.decoderconfig else 1
      image.load()
      pillow = np.asarray(image.convert("RGB"))
    ours = media._simplejpeg(data, "RGB", *size, scale)
    assert ours is not None and ours.shape == pillow.shape and np.array_equal(ours, pillow)
  with Image.open(io.BytesIO(data)) as image:  # process_image takes simplejpeg's pixels
    assert media._upright_jpeg(image, data, None) is not None
  with Image.open(io.BytesIO(data)) as image:
    image.draft("L", (64, 64))
    luma = image.convert("L")
  assert np.array_equal(np.asarray(media._luma(data)), np.asarray(luma))


def test_fingerprints_keep_their_values():
  # The values Pillow's decodes gave (before simplejpeg): dedup compares them across builds.
  for data in INPUTS[:4]:
    stored = media.process_image(data, short_side=256, jpeg_quality=90)[0]
    with Image.open(io.BytesIO(stored)) as image:
      image.draft("L", (64, 64))
      luma = image.convert("L")
    assert media._luma(stored).tobytes() == luma.tobytes()
  before = {0: [-9169604869257759130, -6868199450915281298],  # from HEAD e212c57's media.py
            3: [-9169569681127967182, -6868480925891959174],
            4: [-6739212917303947257, -6705418209260005237],
            5: [-338044556020912839, -8975929777687744711]}
  for i, values in before.items():
    stored = media.process_image(INPUTS[i], short_side=256, jpeg_quality=90)[0]
    assert media.image_fingerprint(stored) == values


def test_a_build_with_the_area_filter_stores_its_bytes(tmp_path):
  """The setting reaches the images a build stores (pipelines/example.py), and a filter that
  does not exist is refused by name before anything runs."""
  for i in range(2):
    (tmp_path / f"{i}.jpg").write_bytes(INPUTS[i])
  manifest = tmp_path / "m.jsonl"
  manifest.write_text("".join(f'{{"id": "x{i}", "image": "{i}.jpg", "caption": "c"}}\n'
                              for i in range(2)))
  settings = {"image_resize_filter": "area", "image_short_side": 256, "num_shards": 1}
  summary = build.run(build.prepare("jsonl", str(manifest), str(tmp_path / "out"), "train",
                                    (settings,)), workers=1)
  assert summary["num_failed"] == 0
  stored = {records.Record.parse(data).id: records.Record.parse(data).image
            for _, data in prepared.open_dataset(str(tmp_path / "out")).records("train")}
  for i in range(2):
    assert stored[f"x{i}"].encoded == pillow_only(INPUTS[i], 256, area)
  with pytest.raises(ValueError, match="image_resize_filter"):
    config_lib.validate(config_lib.resolve({"image_resize_filter": "cubic"}))
