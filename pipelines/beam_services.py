"""Beam's servers beside an engine: its job server, the SDK worker pool, the Python job service.

For Flink and Spark, Beam's Java job server (the runner's driver, through BOUND_JOB_SERVER so
its ports are on the bind address) translates each job for the engine; its JVM, and the
engine's JVMs that run the job, load LOOPBACK_AGENT so the servers Beam's runner opens for the
SDK workers while a job runs are on loopback too. The SDK worker pool (worker_pool.py) starts
the Python SDK workers that run impax's DoFns. The portable engine is Beam's Python job
service alone (through loopback.py).
"""

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile

from impax.pipelines import engine_fetch, processes
from impax.pipelines.engine_fetch import BEAM_JAVA, Engine, EngineError

def start_sdk_worker_pool(state: dict, timeout: float) -> None:
  """Beam's external worker pool (served by worker_pool.py on the bind address): it starts
  a Python SDK worker process for each request.

  Its workers run this interpreter, so this environment's bin comes first on PATH (else
  they die on `import apache_beam`).
  """
  port = state["ports"]["sdk_worker_pool"] = processes.free_port()
  env = {"PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
  processes.spawn(state, "sdk_worker_pool", [sys.executable, "-m", "impax.pipelines.worker_pool",
                                            "--host", state["bind"], "--port", str(port)], env)
  processes.wait("Beam's SDK worker pool", processes.listening(port, state["host"]), state,
                 "sdk_worker_pool", timeout)


# The job server's log, to its process's output (its log file): warnings and errors, and
# each job's state changes.
JOB_SERVER_LOG4J = """rootLogger.level = WARN
rootLogger.appenderRef.out.ref = Out
appender.out.name = Out
appender.out.type = Console
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = %d{HH:mm:ss,SSS} %-5p %c - %m%n
logger.jobs.name = org.apache.beam.runners.jobsubmission
logger.jobs.level = INFO
"""


# Beam's Flink and Spark drivers take --job-host, yet bind their job and artifact ports to
# every interface (their ServerFactory binds the port alone). This driver binds them to
# --job-host; Java runs it from source (`java FILE.java`: a JDK module Debian's JRE ships).
BOUND_JOB_SERVER = """import java.lang.reflect.Method;
import java.net.InetSocketAddress;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.apache.beam.model.pipeline.v1.Endpoints.ApiServiceDescriptor;
import org.apache.beam.runners.jobsubmission.JobInvoker;
import org.apache.beam.runners.jobsubmission.JobServerDriver;
import org.apache.beam.sdk.extensions.gcp.options.GcsOptions;
import org.apache.beam.sdk.fn.channel.SocketAddressFactory;
import org.apache.beam.sdk.fn.server.GrpcContextHeaderAccessorProvider;
import org.apache.beam.sdk.fn.server.ServerFactory;
import org.apache.beam.sdk.io.FileSystems;
import org.apache.beam.sdk.options.PipelineOptions;
import org.apache.beam.sdk.options.PipelineOptionsFactory;
import org.apache.beam.vendor.grpc.v1p60p1.io.grpc.BindableService;
import org.apache.beam.vendor.grpc.v1p60p1.io.grpc.Server;
import org.apache.beam.vendor.grpc.v1p60p1.io.grpc.ServerInterceptors;
import org.apache.beam.vendor.grpc.v1p60p1.io.grpc.netty.NettyServerBuilder;
import org.kohsuke.args4j.CmdLineParser;

/** java -cp CLASSPATH BoundJobServer.java INVOKER_CLASS [the flags of the invoker's driver] */
public class BoundJobServer extends JobServerDriver {
  private BoundJobServer(ServerConfiguration config, JobInvokerFactory invoker) {
    super(config, new BoundServerFactory(), new BoundServerFactory(), invoker);
  }

  public static void main(String[] args) throws Exception {
    // The invoker's create(CONFIGURATION) names the driver's configuration class, flags and all.
    Method create = Arrays.stream(Class.forName(args[0]).getMethods())
        .filter(m -> m.getName().equals("create") && m.getParameterCount() == 1)
        .findFirst().orElseThrow();
    ServerConfiguration config =
        (ServerConfiguration) create.getParameterTypes()[0].getConstructor().newInstance();
    new CmdLineParser(config).parseArgument(Arrays.copyOfRange(args, 1, args.length));
    // As Beam's drivers' main().
    PipelineOptions options = PipelineOptionsFactory.create();
    options.as(GcsOptions.class).setGcsUploadBufferSizeBytes(1024 * 1024);
    FileSystems.setDefaultPipelineOptions(options);
    new BoundJobServer(config, () -> {
      try {
        return (JobInvoker) create.invoke(null, config);
      } catch (ReflectiveOperationException e) {
        throw new IllegalStateException(e);
      }
    }).run();
  }

  /** Serves on the HOST:PORT the driver makes of --job-host and each port flag. */
  static class BoundServerFactory extends ServerFactory {
    @Override
    public Server create(List<BindableService> services, ApiServiceDescriptor descriptor)
        throws java.io.IOException {
      InetSocketAddress address = (InetSocketAddress) SocketAddressFactory.createFrom(descriptor.getUrl());
      // Beam's settings: message size bounded above this layer, its runners' keep-alive pings.
      NettyServerBuilder builder = NettyServerBuilder.forAddress(address)
          .maxInboundMessageSize(Integer.MAX_VALUE)
          .permitKeepAliveTime(20, TimeUnit.SECONDS);
      for (BindableService service : services) {
        builder.addService(
            ServerInterceptors.intercept(service, GrpcContextHeaderAccessorProvider.interceptor()));
      }
      return builder.build().start();
    }

    @Override
    public Server allocateAddressAndCreate(
        List<BindableService> services, ApiServiceDescriptor.Builder descriptor) {
      throw new UnsupportedOperationException("impax gives the job server every port");
    }
  }
}
"""


def start_job_server(state: dict, engine: Engine, flags: tuple[str, ...],
                     extra_classpath: tuple[str, ...], timeout: float, jvm: tuple[str, ...] = (),
                     env: dict | None = None) -> None:
  """Beam's job server for the engine, with the engine's own `flags`, on the bind address."""
  ports = state["ports"]
  for name in ("job", "artifact", "expansion"):
    ports[name] = processes.free_port()
  log4j = os.path.join(state["dir"], "log4j2.properties")
  with open(log4j, "w") as f:
    f.write(JOB_SERVER_LOG4J)
  source = os.path.join(state["dir"], "BoundJobServer.java")
  with open(source, "w") as f:
    f.write(BOUND_JOB_SERVER)
  processes.spawn(state, "job_server", [
      processes.java(), *jvm, f"-javaagent:{loopback_agent(engine)}", "-Xmx1g",
      f"-Dlog4j2.configurationFile=file:{log4j}",
      "-cp", processes.classpath(os.path.join(engine_fetch.job_server_dir(engine), "lib"), *extra_classpath),
      source, engine.job_invoker, *flags, f"--job-host={state['bind']}", f"--job-port={ports['job']}",
      f"--artifact-port={ports['artifact']}", f"--expansion-port={ports['expansion']}"], env)
  processes.wait(f"Beam's {engine.name} job server", processes.listening(ports["job"], state["host"]),
                 state, "job_server", timeout)


# Beam's runner opens a job's servers for its SDK workers (control, data, state, logging,
# provisioning, artifacts) with ServerFactory's InetSocketAddressServerFactory, which binds
# every interface. The engines load it from each job's staged jars, through a loader of the
# job's (Flink's child-first one, a Spark executor's); a copy on the JVM's own classpath
# would be loaded apart from the Beam classes it calls. So the JVMs run the agent
# pipelines/java/LoopbackAgent.java, which gives every loader impax's copy of the class
# (pipelines/java/ServerFactory.java): it binds loopback, the address it tells the workers.
JAVA_SOURCES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "java")
LOOPBACK_AGENT = ("LoopbackAgent.java", "ServerFactory.java")
LOOPBACK_CLASS = "org/apache/beam/sdk/fn/server/ServerFactory$InetSocketAddressServerFactory.class"


def loopback_agent(engine: Engine) -> str:
  """The agent's jar, compiled once into the cache against the engine's job server's jars."""
  sources = [os.path.join(JAVA_SOURCES, name) for name in LOOPBACK_AGENT]
  digest = hashlib.sha256(b"".join(open(s, "rb").read() for s in sources)).hexdigest()[:16]
  jar = os.path.join(engine_fetch.cache_dir(), f"loopback-agent-{BEAM_JAVA}-{digest}.jar")
  if os.path.exists(jar):
    return jar
  lib = os.path.join(engine_fetch.job_server_dir(engine), "lib")
  jars = sorted(os.path.join(lib, n) for n in os.listdir(lib) if n.endswith(".jar"))
  with tempfile.TemporaryDirectory(dir=engine_fetch.cache_dir()) as tmp:
    # javac through its module: Debian's JRE ships it (`java FILE.java` needs it too), not the
    # javac command. --release 8, as Beam's classes, so the copy has their shape.
    result = subprocess.run([processes.java(), "-m", "jdk.compiler/com.sun.tools.javac.Main",
                             "--release", "8", "-Xlint:-options", "-cp", ":".join(jars), "-d", tmp,
                             *sources], capture_output=True, text=True)
    if result.returncode:
      raise EngineError(f"javac {' '.join(LOOPBACK_AGENT)} failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    with zipfile.ZipFile(os.path.join(lib, f"beam-sdks-java-core-{BEAM_JAVA}.jar")) as core:
      replaces = hashlib.sha256(core.read(LOOPBACK_CLASS)).hexdigest()
    with zipfile.ZipFile(os.path.join(tmp, "agent.jar"), "w") as out:
      out.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\nPremain-Class: LoopbackAgent\n")
      for name in sorted(os.listdir(tmp)):
        if name.startswith("LoopbackAgent"):
          out.write(os.path.join(tmp, name), name)
      # Not at its class's path: the jar is on the JVM's classpath, whose loader would take it.
      out.write(os.path.join(tmp, LOOPBACK_CLASS), "loopback/InetSocketAddressServerFactory.class")
      out.writestr("loopback/replaces.sha256", replaces + "\n")
    os.replace(os.path.join(tmp, "agent.jar"), jar)
  return jar


def start_portable(state: dict, slots: int, timeout: float, master: str | None) -> list[str]:
  """Beam's Python job service (the FnApiRunner behind the portability protocol) and the SDK
  worker pool; returns the Beam options of a build on it."""
  if master:
    raise EngineError("the portable engine has no master: it is Beam's job service itself")
  if state["bind"] not in (processes.LOOPBACK, "localhost"):
    # Beam's service binds localhost, and tells a client to stage its files there.
    raise EngineError("the portable engine serves this machine only: its job service listens "
                      "on localhost, whatever --bind says")
  port = state["ports"]["job"] = processes.free_port()
  # Through loopback.py: the servers the service starts for each job listen on localhost too.
  processes.spawn(state, "job_server", [sys.executable, "-m", "impax.pipelines.loopback",
                                        "apache_beam.runners.portability.local_job_service_main",
                                        f"--port={port}"])
  processes.wait("Beam's Python job service", processes.listening(port), state, "job_server", timeout)
  start_sdk_worker_pool(state, timeout)
  return ["--runner=PortableRunner"]
