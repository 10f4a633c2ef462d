# The worker image for `impax build ... -- --runner=DataflowRunner`: Beam's Python SDK
# image of the Beam version impax pins (constraints.txt), plus ffmpeg and impax.
# Build and push it, then pass it with --sdk_container_image:
#
#   docker build -t REGION-docker.pkg.dev/PROJECT/impax/worker:0.1.0 .
#   docker push REGION-docker.pkg.dev/PROJECT/impax/worker:0.1.0
#
# Flink and Spark workers take the same image (--environment_type=DOCKER
# --environment_config=IMAGE). The launcher's Beam and Python versions must match it.
FROM apache/beam_python3.11_sdk:2.77.0

RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ffmpeg \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/impax
COPY pyproject.toml constraints.txt README.md ./
COPY impax impax
COPY pipelines pipelines
COPY datasets datasets
COPY tools tools
COPY model model
COPY train train
COPY flows flows
# The launcher's pins: workers unpickle what the launcher pickled.
RUN pip install --no-cache-dir -c constraints.txt . \
 && ffmpeg -version >/dev/null \
 && python -c "import impax.pipelines.build, impax.datasets.registry; impax.datasets.registry.names()"

# Beam's boot program starts the SDK harness the runner talks to.
ENTRYPOINT ["/opt/apache/beam/boot"]
