"""Apache Beam pipelines that turn raw corpora into ArrayRecord shards with metadata."""
