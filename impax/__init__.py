"""impax: prepare multimodal training data with Apache Beam and train IMP models on it.

The namespace maps onto the project's folders: `impax.pipelines` (pipelines/)
writes shards, `impax.datasets` (datasets/) defines corpora and reads shards,
`impax.model` (model/) is the encoder, `impax.train` (train/) the trainer and
`impax.flows` (flows/) the Prefect flows that orchestrate them.
"""

__version__ = "0.1.0"
