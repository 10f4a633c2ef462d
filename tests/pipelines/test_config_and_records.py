"""Settings layering and hashing; the record format TensorFlow reads."""

import pytest

from impax.datasets import records
from impax.datasets.build_settings import BuildConfig
from impax.pipelines import config as config_lib


def test_settings_layers_and_hash(tmp_path):
  (tmp_path / "c.toml").write_text('video_fps = 4\ncompression = "uncompressed"\n')
  file_layer = config_lib.read_config_file(str(tmp_path / "c.toml"))
  cfg = config_lib.resolve({"video_fps": 2.0, "jpeg_quality": 80}, file_layer, {"jpeg_quality": 70})
  assert (cfg.video_fps, cfg.jpeg_quality, cfg.compression) == (4.0, 70, "uncompressed")
  assert cfg.array_record_options() == "group_size:1,uncompressed"
  fp = lambda c: config_lib.config_hash(config_lib.fingerprint(c, "jsonl"))
  same = config_lib.resolve({"video_fps": 4, "jpeg_quality": 70, "compression": "uncompressed"})
  assert fp(cfg) == fp(same)
  assert fp(cfg) != fp(config_lib.resolve({"video_fps": 4.5}))
  # A split's shard count is its own: not part of the dataset's hash.
  assert fp(same) == fp(config_lib.resolve({"video_fps": 4, "jpeg_quality": 70,
                                            "compression": "uncompressed", "num_shards": 9}))
  with pytest.raises(ValueError, match="setting video_fps must be a float"):
    config_lib.resolve({"video_fps": "fast"})
  with pytest.raises(ValueError, match="compression='lz4'"):
    config_lib.resolve({"compression": "lz4"})
  (tmp_path / "bad.json").write_text("{oops")
  with pytest.raises(ValueError, match="bad.json is not valid JSON"):
    config_lib.read_config_file(str(tmp_path / "bad.json"))


def test_the_cli_and_the_flow_layer_a_config_file_and_options_alike(tmp_path):
  (tmp_path / "c.json").write_text('{"video_fps": 4, "jpeg_quality": 80}')
  layers = config_lib.layers(str(tmp_path / "c.json"), {"jpeg_quality": 70, "video_fps": None})
  assert layers == ({"video_fps": 4, "jpeg_quality": 80}, {"jpeg_quality": 70})
  # Over the spec's settings: the file wins over the spec, the options over the file.
  cfg = config_lib.resolve({"video_fps": 2.0, "image_short_side": 64}, *layers)
  assert (cfg.video_fps, cfg.jpeg_quality, cfg.image_short_side) == (4.0, 70, 64)
  assert config_lib.layers() == ({},)
  with pytest.raises(ValueError, match="config file .*missing.toml does not exist"):
    config_lib.layers(str(tmp_path / "missing.toml"), {})
  (tmp_path / "unknown.toml").write_text("fps = 4\n")
  with pytest.raises(ValueError, match="unknown setting.s. fps; known: name, version"):
    config_lib.layers(str(tmp_path / "unknown.toml"))


def test_the_build_config_is_the_formats_and_its_stored_part_is_what_is_hashed():
  assert config_lib.BuildConfig is BuildConfig
  cfg = config_lib.resolve({"num_shards": 3, "download_retries": 1, "video_fps": 4})
  assert config_lib.fingerprint(cfg, "jsonl")["config"] == cfg.stored()
  assert "num_shards" not in cfg.stored() and "download_retries" not in cfg.stored()
  assert cfg.stored()["video_fps"] == 4.0


def test_records_parse_as_tf_train_example():
  import tensorflow as tf
  data = records.serialize(id_="x", source="/v.mp4", captions=["a b", "c"], tokens=[[5, 6], [7]],
                           labels=[(2, "dog"), (0, "ant")])
  example = tf.train.Example.FromString(data)
  f = example.features.feature
  assert f["text/tokens"].int64_list.value == [5, 6, 7]
  assert f["text/lengths"].int64_list.value == [2, 1]
  assert f["label/name"].bytes_list.value == [b"dog", b"ant"]
  # Deterministic bytes: TensorFlow's own deterministic serialization agrees.
  assert example.SerializeToString(deterministic=True) == data
  assert records.parse_example(data)["id"] == [b"x"]
  assert set(records.parse_example(data)) <= set(records.FEATURES)
