"""impax.pipelines: Apache Beam pipelines that write prepared datasets.

A raw corpus (read by a spec of impax.datasets) becomes ArrayRecord shards of
the record contract (impax.datasets.records) and a metadata.json
(impax.datasets.metadata):

  build.py          the launcher: prepare (plan.py), run on any Beam runner, publish.py;
                    `impax.build` is its build()
  plan.py, graph.py the plan of a build, and its Beam graph (read.py, example.py)
  read.py           a spec's entries; download.py, media from http(s) URLs
  example.py        one example: decoded (media.py), tokenized (text.py), a record
  publish.py        metadata.json, failures-SPLIT.jsonl and the duplicates' summary
  config.py         the build settings layered over their defaults (impax.datasets.build_settings)
  storage.py, lock.py   output folders local or in a bucket; one build per output
  progress.py, stats.py, tools.py   the progress line, split statistics, the ffmpeg binary
  engine.py         Flink, Spark or Beam's job service on loopback: engine_fetch.py (pinned
                    downloads), processes.py (supervision), flink.py, spark.py,
                    beam_services.py; loopback.py and worker_pool.py keep servers on loopback

May import: impax.datasets and impax.tools.
"""
