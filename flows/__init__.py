"""Prefect flows that orchestrate impax: build datasets, train, evaluate.

  build.py        build_dataset: each split of one dataset through the Beam build, cached
  train.py        train: AGD training from prepared datasets, curves and evaluation as artifacts
  end_to_end.py   end_to_end: your corpora, every build, train, a report
  demo.py         the demo's flows: build_demo_dataset, and end_to_end on the generated demo
                  corpus; `python -m impax.flows.demo DIR` (make demo, impax demo) runs it
  deployments.py  the deployments, once: prefect.yaml is written from them
  serve.py        `python -m impax.flows.serve`: the deployments served for the UI

Flows only orchestrate: they call pipelines/, train/ and datasets/, and nothing in impax
but the CLI imports them. The production flows (build, train, end_to_end) import nothing
of the demo; only demo.py calls its generator (impax/demo.py).
"""


def artifact_key(*parts: str) -> str:
  """An artifact key from names: lowercase letters, digits and dashes, as Prefect requires."""
  text = "-".join(parts).lower()
  return "-".join(filter(None, "".join(c if c.isascii() and c.isalnum() else "-"
                                       for c in text).split("-")))


def markdown_text(text: str) -> str:
  """Markdown for Prefect's UI, whose renderer drops what looks like an HTML tag
  (`cannot read <image>` would show as `cannot read `): each `<` escaped."""
  return text.replace("<", "&lt;")


def retried_unless(*refusals: type[BaseException]):
  """A task's retry_condition_fn: a failure of these types (a refusal that comes again on
  every attempt: a held output, a diverged run) is not retried; any other failure is."""
  def condition(task, task_run, state) -> bool:
    try:
      state.result()
    except refusals:
      return False
    except Exception:
      return True
    return True
  return condition
