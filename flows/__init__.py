"""Prefect flows that orchestrate impax: build datasets, train, evaluate.

  build.py       build_dataset: each split of one dataset through the Beam build, cached
  train.py       train: AGD training from prepared datasets, curves and evaluation as artifacts
  end_to_end.py  end_to_end: the demo corpus (or your corpora), every build, train, a report
  serve.py       `python -m impax.flows.serve`: the three flows as deployments for the UI
  demo.py        `python -m impax.flows.demo DIR`: end_to_end on Prefect's ephemeral server

Flows only orchestrate: they call pipelines/, train/, datasets/ and the demo
(impax/demo.py), and nothing in impax imports them.
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
