"""impax: prepare multimodal training data with Apache Beam and train IMP models on it.

The namespace maps onto the project's folders: `impax.pipelines` (pipelines/)
writes shards, `impax.datasets` (datasets/) defines corpora and reads shards,
`impax.model` (model/) is the encoder, `impax.train` (train/) the trainer and
`impax.flows` (flows/) the Prefect flows that orchestrate them. This folder
holds the `impax` command (cli.py, which may import anything) and the demo
(demo.py: anything but the flows and the CLI). tests/test_layering.py keeps
the imports to these rules.
"""

__version__ = "0.1.0"
