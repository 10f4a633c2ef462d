"""`--set FIELD=VALUE` on nested fields: a task's by its name, its augment's, a bucket's by
index; and the errors that name what was wrong."""

import pytest

from impax.train import config as config_lib
from impax.train.config import Augment, Bucket, ConfigError, Task, TrainConfig

CONFIG = TrainConfig(
    tasks=(Task("image_text", "data/images", "contrastive", ("image", "text"),
                buckets=(Bucket(image=(32, 32)), Bucket(image=(48, 48))), token_budget=3072),
           Task("video_text", "data/videos", "contrastive", ("video", "text"),
                buckets=(Bucket(video=(4, 32, 32)),), augment=Augment(crop_area=(0.6, 1.0)))),
    model_overrides=(("vision_stem", (16, 32)),))


def test_a_task_is_set_by_its_name_down_to_its_augment_and_buckets():
  config = config_lib.apply_overrides(CONFIG, [
      "tasks.video_text.token_budget=4096", "tasks.video_text.augment.crop_area=[0.5, 1]",
      "tasks.video_text.augment.flip=False", "tasks.image_text.buckets.1.image=[64,64]",
      "tasks.image_text.eval_bucket.image=[40, 40]", "tasks.image_text.eval_split=null",
      "tasks.image_text.prompt=a photo of {label}.", "tasks.video_text.interval=2", "steps=7"])
  images, videos = config.tasks
  assert videos.token_budget == 4096 and images.token_budget == 3072
  assert videos.augment == Augment(crop_area=(0.5, 1.0), flip=False)
  assert images.buckets == (Bucket(image=(32, 32)), Bucket(image=(64, 64)))
  assert images.eval_bucket == Bucket(image=(40, 40))  # from Bucket()'s defaults
  assert images.eval_split is None and images.prompt == "a photo of {label}."
  assert videos.interval == 2 and config.steps == 7
  assert type(videos) is Task  # the trainer's Task, not the loader's it extends
  # A whole value as JSON: a task's buckets, the model's overrides.
  config = config_lib.apply_overrides(CONFIG, [
      'tasks.video_text.buckets=[{"video": [2, 16, 16]}, {"video": [4, 16, 16], "weight": 3}]',
      'model_overrides=[["vocab_size", 100]]'])
  assert config.tasks[1].buckets == (Bucket(video=(2, 16, 16)),
                                     Bucket(video=(4, 16, 16), weight=3.0))
  assert config.model_overrides == (("vocab_size", 100),)
  # Recorded and compared as the config's JSON: a nested change is seen on resume.
  changed = config_lib.apply_overrides(CONFIG, ["tasks.video_text.augment.flip=false"])
  assert [c[0] for c in config_lib.changes(config_lib.to_json(CONFIG), changed)] == [
      "tasks['video_text'].augment"]


@pytest.mark.parametrize("item, message", [
    # an unknown field is named, with the fields there are
    ("stesp=1", r"--set 'stesp=1': expected FIELD=VALUE with FIELD one of \['b1', .*'steps', "
                r".*\], or tasks.TASK.FIELD=VALUE with TASK one of \['image_text', 'video_text'\]"),
    ("tasks=1", r"expected FIELD=VALUE .* or tasks.TASK.FIELD=VALUE"),
    ("tasks.audio.token_budget=1", r"no task 'audio'; expected tasks.TASK.FIELD=VALUE with "
                                   r"TASK one of \['image_text', 'video_text'\]"),
    ("tasks.video_text=1", r"expected tasks.video_text.FIELD=VALUE with FIELD one of "
                           r"\['augment', 'buckets', .*'token_budget'.*\]"),
    ("tasks.video_text.token_budgt=1", r"tasks.video_text has no field 'token_budgt'; expected "
                                       r"tasks.video_text.FIELD=VALUE with FIELD one of "
                                       r"\['augment', .*'token_budget'.*\]"),
    ("tasks.video_text.augment.crop=1", r"tasks.video_text.augment has no field 'crop'; "
                                        r"expected tasks.video_text.augment.FIELD=VALUE with FIELD "
                                        r"one of \['crop_area', 'crop_aspect', 'flip', "
                                        r"'temporal_jitter'\]"),
    ("tasks.video_text.buckets.1.video=[4,16,16]", r"expected tasks.video_text.buckets.INDEX."
                                                   r"FIELD=VALUE with INDEX from 0 to 0"),
    ("tasks.video_text.buckets.0.frames=4", r"tasks.video_text.buckets.0 has no field 'frames'"),
    ('tasks.video_text.buckets=[{"frames": 4}]', r"takes a JSON list \[\{video, image, "
                                                 r"audio_seconds, weight, batch_size\}, \.\.\.\]: "
                                                 r"Bucket has no field 'frames'"),
    ("steps.x=1", r"steps takes an int; it has no fields"),
    # a bad value says the type expected
    ("steps=many", r"--set 'steps=many': steps takes an int$"),
    ("learning_rate=fast", r"learning_rate takes a float$"),
    ("plots=maybe", r"plots takes true or false$"),
    ("tasks.video_text.token_budget=many", r"tasks.video_text.token_budget takes an int$"),
    ("tasks.video_text.augment.crop_area=[1]", r"tasks.video_text.augment.crop_area takes a JSON "
                                               r"list \[float, float\]: 1 values, not 2"),
    ("tasks.image_text.buckets.0.image=48", r"tasks.image_text.buckets.0.image takes a JSON list "
                                            r"\[int, int\] or null: 48 is not a list"),
    ("tasks.image_text.eval_bucket.audio_seconds=long", r"audio_seconds takes a float or null$"),
])
def test_a_wrong_field_or_value_is_named(item, message):
  with pytest.raises(ConfigError, match=message):
    config_lib.apply_overrides(CONFIG, [item])


def test_zero_shot_prompts_are_set_checked_and_may_change_on_resume():
  ensemble = config_lib.apply_overrides(
      CONFIG, ['tasks.video_text.zero_shot_prompts=["the digit {label}.", "a {label}."]'])
  assert ensemble.tasks[1].zero_shot_prompts == ("the digit {label}.", "a {label}.")
  config_lib.check(ensemble)
  # How a run is evaluated, not what it trains: a resumed run may change it.
  assert config_lib.changes(config_lib.to_json(CONFIG), ensemble) == [
      ("tasks['video_text'].zero_shot_prompts", [], ["the digit {label}.", "a {label}."], False)]
  nameless = config_lib.apply_overrides(CONFIG, ['tasks.video_text.zero_shot_prompts=["a digit."]'])
  with pytest.raises(ConfigError, match=r"task 'video_text': each of zero_shot_prompts must be a "
                                        r"str with \{label\} .*not 'a digit.'"):
    config_lib.check(nameless)
