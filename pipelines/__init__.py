"""impax.pipelines: Apache Beam pipelines that write prepared datasets.

A raw corpus (read by a spec of impax.datasets) becomes ArrayRecord shards of
the record contract (impax.datasets.records) and a metadata.json
(impax.datasets.metadata): build.py launches it on any Beam runner, and engine.py
brings up Flink, Spark or Beam's job service on loopback to run it on.

May import: impax.datasets.
"""
