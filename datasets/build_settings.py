"""The build's settings as a type: what `impax build` takes and metadata.json's `config` holds.

    config = BuildConfig(video_fps=4.0)   # pipelines/config.py resolves and checks one
    meta.config.video_fps                 # a prepared dataset's, read back (metadata.py)

The format's side of the settings: their names, types, defaults and help, and which of
them fix a dataset's bytes (`stored`). Layering them (defaults, the spec, a config file,
flags), checking them and hashing them is the build's, in pipelines/config.py.
"""

import dataclasses

JPEG_MAX_SIDE = 65500  # libjpeg's largest width or height


def _field(default, help_):
  return dataclasses.field(default=default, metadata={"help": help_})


@dataclasses.dataclass(frozen=True)
class BuildConfig:
  name: str = _field("", "dataset name used in shard file names (default: the output folder's name)")
  version: str = _field("1.0.0", "dataset version recorded in the metadata")
  # Video.
  video_fps: float = _field(8.0, "frames per second sampled from videos")
  video_max_frames: int = _field(128, "most frames stored per clip; longer clips are cut")
  video_short_side: int = _field(256, "frames are resized so their short side is this many pixels")
  jpeg_quality: int = _field(90, "JPEG quality of stored frames and images (1-95)")
  audio_track: str = _field("optional", "a video's audio track: optional, required or ignore")
  # Audio.
  audio_sample_rate: int = _field(16000, "audio is resampled to this rate (Hz), mono")
  audio_max_seconds: float = _field(30.0, "most seconds of audio stored per audio clip")
  # Images.
  image_short_side: int = _field(256, "images are resized so their short side is this many pixels; 0 keeps the size")
  # LANCZOS is sharper; the area filter (each pixel the mean of the area it covers, what
  # img2dataset stores) takes about 40% less CPU an image (benchmarks/README.md, issue 30).
  image_resize_filter: str = _field("lanczos", "filter that shrinks images: lanczos (Pillow's) "
                                    "or area (OpenCV's INTER_AREA, as img2dataset)")
  # 8:1 at the default short side: only banners and spacers are wider, and a model
  # trained on crops of a few hundred pixels loses nothing when they shrink.
  max_long_side: int = _field(2048, "frames and images whose long side would be longer are shrunk "
                              "to this, keeping the aspect (so the short side is smaller); "
                              f"0: only JPEG's limit, {JPEG_MAX_SIDE}")
  # Text and labels.
  tokenizer: str = _field("", "SentencePiece .model to use; empty: train one on the corpus's text")
  vocab_size: int = _field(8000, "vocabulary size of a trained tokenizer (an upper bound on small corpora)")
  # BPE: SentencePiece's unigram trainer gives character-level vocabularies
  # on small corpora (a few thousand captions); BPE learns words on any size.
  tokenizer_type: str = _field("bpe", "SentencePiece model type of a trained tokenizer: bpe or unigram")
  labels_file: str = _field("", "text file with the label vocabulary, one per line; empty: built from the corpus")
  # Shards.
  num_shards: int = _field(0, "number of shards per split; 0: one per shard_size examples")
  shard_size: int = _field(1000, "examples per shard when num_shards is 0")
  group_size: int = _field(1, "ArrayRecord group size (1 lets Grain read records at random)")
  compression: str = _field("zstd:3", "ArrayRecord compression: uncompressed, zstd:N, brotli:N or snappy")
  # Duplicates.
  fingerprints: bool = _field(True, "store exact and perceptual fingerprints in every record (impax dedup reads them)")
  # Tools.
  ffmpeg_timeout: float = _field(300.0, "seconds before an ffmpeg call is killed")
  ffmpeg_threads: int = _field(1, "threads per ffmpeg call (parallelism comes from workers)")
  # Media from http(s) URLs (pipelines/download.py).
  download_connect_timeout: float = _field(10.0, "seconds a download may take to connect")
  download_read_timeout: float = _field(20.0, "seconds a download may wait for data")
  download_timeout: float = _field(300.0, "seconds one try of a download may take in all")
  download_retries: int = _field(3, "tries after the first for a 408, 429 or 5xx status, a "
                                 "timeout or a broken connection")
  download_backoff: float = _field(1.0, "seconds before the first retry, doubled for each "
                                   "next one, with jitter (a Retry-After header may ask more)")
  download_max_redirects: int = _field(10, "most redirects a download follows")
  download_per_host: int = _field(4, "most downloads from one host at once in each worker process")
  download_threads: int = _field(32, "downloads each worker runs at once, ahead of the examples "
                                 "that need them; 1: each as its example is processed")
  # Sizes a corpus's media have with room to spare (CC3M's images, WebVid's previews); a
  # larger body is more likely a mistake than an example.
  download_image_max_bytes: int = _field(32_000_000, "most bytes of a downloaded image")
  download_video_max_bytes: int = _field(1_000_000_000, "most bytes of a downloaded video")
  download_audio_max_bytes: int = _field(256_000_000, "most bytes of a downloaded audio file")
  user_agent: str = _field("", "a contact (an email or a URL) for the User-Agent header "
                           "`impax/VERSION (+CONTACT)` that sites see")
  opt_out: str = _field("noai,noimageai,noindex,noimageindex",
                        "X-Robots-Tag directives that refuse a download, comma-separated "
                        "(img2dataset's by default); empty: none")
  keep_originals: str = _field("", "a folder (local, gs://, s3://) that keeps every download "
                               "by its sha256; a rebuild takes a URL's body from there")

  def array_record_options(self) -> str:
    return f"group_size:{self.group_size},{self.compression}"

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  def stored(self) -> dict:
    """The settings that fix a dataset's bytes: metadata.json's `config`, and what the
    config hash hashes. Each split's sharding (Split.sharding) and how media are fetched
    are not among them, and read back from metadata.json as their defaults."""
    return {k: v for k, v in self.to_dict().items()
            if k not in SPLIT_FIELDS and k not in FETCH_FIELDS}


# Settings a split may choose for itself (a small test split wants fewer
# shards); they are not part of the dataset's config hash.
SPLIT_FIELDS = ("num_shards", "shard_size")
# Settings of how media are fetched, not of what a record holds: another timeout or
# contact resumes the same dataset. (The size limits and opt-out decide which URLs
# become examples, so they are hashed.)
FETCH_FIELDS = ("download_connect_timeout", "download_read_timeout", "download_timeout",
                "download_retries", "download_backoff", "download_max_redirects",
                "download_per_host", "download_threads", "user_agent", "keep_originals")
