"""storage.patch_beam replaces two Beam internals; these tests fail when either changes shape,
so a Beam upgrade that would make a patch wrong (or a no-op) is seen at once."""

import inspect
import subprocess
import sys
import textwrap

import pytest
from apache_beam.internal.gcp import auth
from apache_beam.io.aws.clients.s3 import boto3_client

from impax.pipelines import storage

# What Beam's S3 Client.__init__ sets, and so what the shared client must set itself
# when it skips that __init__.
CLIENT_STATE = {"client": None, "_download_request": None, "_download_stream": None,
                "_download_pos": 0}
OPTIONS = {"s3_endpoint_url": "http://127.0.0.1:9", "s3_access_key_id": "testing",
           "s3_secret_access_key": "testing", "s3_region_name": "us-east-1"}


def beams_client():
  """Beam's own S3 Client class, whether or not the patch has replaced it here."""
  return next(c for c in boto3_client.Client.__mro__ if not c.__dict__.get("shared"))


def beams_credential_search():
  """Beam's own credential search, whether or not the patch has wrapped it here."""
  return inspect.unwrap(inspect.getattr_static(auth._Credentials, "_get_service_credentials").__func__)


def test_beams_s3_client_is_what_the_shared_client_extends():
  pytest.importorskip("boto3")
  client = beams_client()
  assert inspect.isclass(client)
  assert list(inspect.signature(client.__init__).parameters) == ["self", "options"]
  made = client(dict(OPTIONS))  # a boto3 client makes no connection until it is used
  assert set(vars(made)) == set(CLIENT_STATE)
  assert {k: v for k, v in vars(made).items() if k != "client"} == {
      k: v for k, v in CLIENT_STATE.items() if k != "client"}
  assert made.client.meta.endpoint_url == OPTIONS["s3_endpoint_url"]


def test_beams_credential_search_is_a_staticmethod_of_the_options():
  assert isinstance(inspect.getattr_static(auth._Credentials, "_get_service_credentials"),
                    staticmethod)
  parameters = list(inspect.signature(beams_credential_search()).parameters.values())
  assert len(parameters) == 1
  assert parameters[0].kind in (inspect.Parameter.POSITIONAL_ONLY,
                                inspect.Parameter.POSITIONAL_OR_KEYWORD)


def test_importing_storage_patches_nothing_and_patch_beam_patches_both():
  pytest.importorskip("boto3")  # without it there is no S3 client to patch
  # A fresh process: this one may have been patched by a build already.
  script = textwrap.dedent("""
      from apache_beam.internal.gcp import auth
      from apache_beam.io.aws.clients.s3 import boto3_client
      from impax.pipelines import storage

      def state():
        return (getattr(boto3_client.Client, "shared", False),
                getattr(auth._Credentials._get_service_credentials, "emulator_aware", False))

      print(state())
      storage.patch_beam()
      print(state())
  """)
  done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr
  assert done.stdout.split("\n")[:2] == ["(False, False)", "(True, True)"]


def test_a_second_patch_beam_changes_nothing():
  pytest.importorskip("boto3")  # without it there is no S3 client to patch
  storage.patch_beam()
  first = (boto3_client.Client, inspect.getattr_static(auth._Credentials, "_get_service_credentials"))
  storage.patch_beam()
  assert boto3_client.Client is first[0]
  assert inspect.getattr_static(auth._Credentials, "_get_service_credentials") is first[1]
  assert boto3_client.Client.__bases__ == (beams_client(),)  # wrapped once, not twice


def test_shared_s3_clients_share_one_boto3_client_per_settings():
  pytest.importorskip("boto3")
  storage.patch_beam()
  one, two = boto3_client.Client(dict(OPTIONS)), boto3_client.Client(dict(OPTIONS))
  other = boto3_client.Client({**OPTIONS, "s3_endpoint_url": "http://127.0.0.1:10"})
  assert one.client is two.client and other.client is not one.client
  for made in (one, two, other):
    assert set(vars(made)) == set(CLIENT_STATE)
    assert (made._download_request, made._download_stream, made._download_pos) == (None, None, 0)


def test_credentials_are_searched_for_only_without_a_gcs_emulator(monkeypatch):
  storage.patch_beam()
  searched = []

  def search(options):
    searched.append(options)
    raise OSError("no credentials here")  # Beam then connects anonymously: None

  monkeypatch.setattr(auth._Credentials, "_get_credentials_with_retrys", staticmethod(search))
  monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:9")
  assert auth._Credentials._get_service_credentials("options") is None
  assert searched == []
  monkeypatch.delenv("STORAGE_EMULATOR_HOST")
  assert auth._Credentials._get_service_credentials("options") is None
  assert searched == ["options"]
