"""impax.datasets: what data is. It owns the formats; the pipelines write them, the trainer reads them.

  registry.py, specs/  how a raw corpus is read: Entry, DatasetSpec, the built-in specs
  modalities.py        the vocabulary: stored media, model inputs, which medium each input needs
  records.py           the record contract: feature keys and dtypes, tf.Example bytes
  metadata.py          metadata.json as types, with its one writer and one reader
  prepared.py          opening and checking a prepared dataset (staging gs://, s3://)
  decode.py, loader.py one record into arrays; Task, and the resolution-bucketed loader
  inspect.py           `impax inspect DIR`

May import: nothing of impax outside impax.datasets.
"""
