"""prefect.yaml is written from the one table of deployments that serve uses too."""

import pathlib

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_prefect_yaml_is_written_from_the_deployments_table():
  from impax.flows import deployments
  with open(REPO / "prefect.yaml") as f:
    assert f.read() == deployments.prefect_yaml(), (
        "prefect.yaml is stale: python -m impax.flows.deployments > prefect.yaml")
