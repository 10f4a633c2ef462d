"""`import impax` is the surface a user scripts against: cheap to import, each name loaded
when first touched, each with a docstring that shows its call."""

import inspect
import json
import subprocess
import sys

import impax

HEAVY = ("jax", "apache_beam", "tensorflow", "grain", "prefect", "sklearn", "flax", "numpy")


def loaded_after(code: str) -> dict:
  """The heavy libraries and impax modules loaded in a fresh interpreter after code."""
  probe = (f"import sys\n{code}\nimport json\n"
           "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
           f"{HEAVY!r} and '.' not in m or m.startswith('impax'))))")
  out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
  return set(json.loads(out.stdout.splitlines()[-1]))


def test_importing_impax_loads_nothing_heavy():
  assert loaded_after("import impax") == {"impax"}


def test_a_name_loads_its_module_only():
  loaded = loaded_after("import impax; impax.Loader")
  assert "impax.datasets.loader" in loaded
  assert not {m for m in loaded if m.startswith(("impax.train", "impax.pipelines", "impax.flows",
                                                 "impax.tools", "impax.model"))}
  assert not {"apache_beam", "tensorflow", "prefect", "sklearn", "flax"} & loaded


def test_every_public_name_resolves_with_a_docstring_that_shows_a_call():
  for name in impax.__all__:
    value = getattr(impax, name)
    doc = inspect.getdoc(value) or ""
    assert f"impax.{name}(" in doc, f"impax.{name}'s docstring shows no call of impax.{name}(...)"
  assert set(impax.__all__) <= set(dir(impax))


def test_train_is_the_package_and_the_function():
  import impax.train.config  # a submodule import sets impax.train to the package
  from impax.train import trainer
  assert impax.train.config.TrainConfig is impax.TrainConfig
  assert callable(impax.train)
  assert inspect.signature(type(impax.train).__call__).parameters.keys() >= {"config", "workdir"}
  assert trainer.train.__module__ == "impax.train.trainer"


def test_an_unknown_name_is_an_attribute_error():
  try:
    impax.Trainer
  except AttributeError as e:
    assert "Trainer" in str(e)
  else:
    raise AssertionError("impax.Trainer resolved")
