"""impax.datasets: what data is. It owns the formats; the pipelines write them, the trainer reads them.

  registry.py, specs/  how a raw corpus is read: Entry, DatasetSpec, the built-in specs
  modalities.py        the vocabulary: stored media, model inputs, which medium each input needs
  records.py           the record contract: feature keys and dtypes, tf.Example bytes, and
                       Record, the typed view every reader reads a record through
  metadata.py          metadata.json as types, with its one writer and one reader
  build_settings.py    a build's settings as a type (BuildConfig): metadata.json's config
  prepared.py          the reader of a prepared dataset: its metadata, shards and records;
                       opening and checking one for training (gs://, s3:// where they are)
  files.py             paths and files, local or remote: the one caller of Beam's FileSystems
  exclusions.py        exclusion lists (a dedup report, or record ids) that `Task.exclude` reads
  loader.py            the resolution-bucketed loader (Task, Bucket, Loader): a record source,
                       the sampler and the reader, composed
  sampler.py           which bucket, records and random seeds each step takes; the named
                       random streams (Stream), the trainer's schedule's too
  reader.py, decode.py record bytes into one example's arrays at a bucket's shape (CPU)
  mel.py               the mel spectrogram: the loader's log-mel and the build's fingerprints

The tools that check and describe a prepared dataset (`impax verify`, `dedup`, `card`,
`inspect`) read it through prepared.py and records.py from impax.tools, above this package.

May import: nothing of impax outside impax.datasets.
"""
