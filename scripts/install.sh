#!/usr/bin/env bash
# Installs everything impax needs on a fresh Debian machine with Python 3.11:
# ffmpeg (apt when root, else imageio-ffmpeg's binary from pip), chromium,
# chromedriver and PostgreSQL for the tests (apt when root), a virtualenv
# in $VENV with the pinned stack (constraints.txt) and impax in editable mode.
set -euo pipefail
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}

apt_install() {
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing $* with apt-get"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
    return 0
  fi
  return 1
}

if ! command -v ffmpeg >/dev/null; then
  apt_install ffmpeg || echo "not root: impax will use the ffmpeg binary shipped by the imageio-ffmpeg wheel"
fi
# Tests only: the browser tests (the dataset card, the Prefect UI) drive Debian's
# headless chromium through its chromedriver (selenium, in the test extra).
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  apt_install chromium chromium-driver || echo "not root: without chromium and chromedriver the browser tests fail"
fi
# Tests only: the Prefect server tests on PostgreSQL start Debian's server
# (/usr/lib/postgresql/VERSION/bin) on 127.0.0.1 (tests/flows/postgres.py).
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null; then
  apt_install postgresql || echo "not root: without PostgreSQL the Prefect tests on PostgreSQL fail"
fi

if [ ! -x "$VENV/bin/python" ]; then
  if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
    rm -rf "$VENV"
    apt_install python3-venv || { echo "error: '$PYTHON -m venv' failed; install python3-venv" >&2; exit 1; }
    "$PYTHON" -m venv "$VENV"
  fi
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
# The stack (about 3.6 GB) goes in with uv, pinned here, into the venv: the same packages
# at the same pins as pip's (constraints.txt), from its cache in about 30 s where pip takes
# 2-3 minutes, which is most of a warm `make demo`'s install. pip stays in the venv for users.
# --compile-bytecode (26 of those 30 s): as pip does, the .pyc files are written at install,
# not by the first import in each of the suite's and the builds' processes (and never, where
# PYTHONDONTWRITEBYTECODE is set: then each process compiled its imports, 9 s each).
UV_VERSION=0.13.10
"$VENV/bin/python" -m pip install -q "uv==$UV_VERSION"
# setuptools too, pinned: a reinstall without build isolation (pip install
# --no-build-isolation -e .) builds with the venv's, and pyproject.toml needs >= 77.
# PYTHONWARNINGS: setuptools tells every editable install of a package mapped onto
# folders (pyproject's package-dir) that a folder named as the package may take precedence
# on imports; here impax/ is that package's own folder. The files are uv's default on Linux:
# hard links into its cache (12 s less than copies here), copies where the cache is on
# another file system (under -q, without uv's warning); UV_LINK_MODE chooses otherwise.
PYTHONWARNINGS="ignore:Editable installation" \
  "$VENV/bin/uv" pip install -q --compile-bytecode --python "$VENV/bin/python" -c constraints.txt \
    setuptools -e '.[test]'
# The engines of distributed builds (README "Dataflow, Flink and Spark"), fetched once into
# ${IMPAX_ENGINE_CACHE:-~/.cache/impax/engines} and reused: Flink's and Spark's jars from
# PyPI's sdists, Beam's job servers from Maven Central (Java 17 and Maven), Prism built with
# go install (minutes, the first time). Each is checked against pinned checksums.
# IMPAX_SKIP_ENGINES=1 skips them (the engine tests then fail, saying what is missing).
if [ "${IMPAX_SKIP_ENGINES:-0}" != 1 ]; then
  if ! command -v java >/dev/null || ! command -v mvn >/dev/null; then
    apt_install openjdk-17-jre-headless maven || echo "not root: without Java 17 and Maven the Flink and Spark tests fail"
  fi
  for engine in flink spark; do "$VENV/bin/impax" engine "$engine" fetch; done
  if command -v go >/dev/null; then
    "$VENV/bin/impax" engine prism fetch
  else
    echo "no Go toolchain: Prism is not built (https://go.dev/doc/install), and its test fails"
  fi
fi
echo "installed: $("$VENV/bin/impax" --help >/dev/null && echo impax) in $VENV"
