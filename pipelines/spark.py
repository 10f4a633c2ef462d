"""A Spark standalone cluster on this machine: a master and one worker, configured here.

`start` runs Spark's master and worker as Spark's launcher scripts would, then Beam's Spark
job server, which is the Spark driver of every job, and the SDK worker pool
(beam_services.py). With `master`, a Spark cluster already running, only Beam's job server
and the pool start.
"""

import os

from impax.pipelines import beam_services, engine_fetch, processes

# What Spark's launcher scripts pass on Java 17 (org.apache.spark.launcher.JavaModuleOptions).
SPARK_JAVA17 = ["-XX:+IgnoreUnrecognizedVMOptions", "--add-opens=java.base/java.lang=ALL-UNNAMED",
                "--add-opens=java.base/java.lang.invoke=ALL-UNNAMED",
                "--add-opens=java.base/java.lang.reflect=ALL-UNNAMED",
                "--add-opens=java.base/java.io=ALL-UNNAMED", "--add-opens=java.base/java.net=ALL-UNNAMED",
                "--add-opens=java.base/java.nio=ALL-UNNAMED", "--add-opens=java.base/java.util=ALL-UNNAMED",
                "--add-opens=java.base/java.util.concurrent=ALL-UNNAMED",
                "--add-opens=java.base/java.util.concurrent.atomic=ALL-UNNAMED",
                "--add-opens=java.base/jdk.internal.ref=ALL-UNNAMED",
                "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED", "--add-opens=java.base/sun.nio.cs=ALL-UNNAMED",
                "--add-opens=java.base/sun.security.action=ALL-UNNAMED",
                "--add-opens=java.base/sun.util.calendar=ALL-UNNAMED",
                "-Djdk.reflect.useDirectMethodHandle=false"]


def start(state: dict, slots: int, timeout: float, master: str | None) -> list[str]:
  """Starts the cluster (unless `master` names one) and Beam's services for it; returns the
  Beam options of a build on it."""
  engine = engine_fetch.ENGINES["spark"]
  home = state["home"] = engine_fetch.home(engine)
  executors = ()
  if master is None:
    master = _cluster(state, home, slots, timeout)
    # The driver's conf (Beam's runner reads spark.* properties) starts each job's executors,
    # which run Beam's runner for the SDK workers, with the agent; not on a cluster of one's
    # own, whose hosts need not have this path.
    executors = (f"-Dspark.executor.extraJavaOptions=-javaagent:{beam_services.loopback_agent(engine)}",)
  # Beam's runner is the Spark driver, inside the job server: Spark's jars go after Beam's.
  # SPARK_LOCAL_IP: the driver (and its web UI, each job's) binds there, not to every interface.
  beam_services.start_job_server(state, engine, (f"--spark-master-url={master}",),
                                 (os.path.join(home, "jars"),), timeout,
                                 jvm=(*SPARK_JAVA17, *executors), env={"SPARK_LOCAL_IP": state["bind"]})
  beam_services.start_sdk_worker_pool(state, timeout)
  return ["--runner=SparkRunner"]


def _cluster(state: dict, home: str, slots: int, timeout: float) -> str:
  """A standalone master and a worker; returns the master's URL."""
  ports = state["ports"]
  for name in ("spark_master", "spark_master_ui", "spark_worker_ui"):
    ports[name] = processes.free_port()
  jars = processes.classpath(os.path.join(home, "jars"))
  # The worker starts executors from SPARK_HOME's jars; SPARK_SCALA_VERSION spares it
  # looking for a source build's assembly folders.
  # --host: where each listens for rpc (and advertises); SPARK_LOCAL_IP: where their web UIs,
  # and the executors the worker starts, listen.
  env = {"SPARK_HOME": home, "SPARK_LOCAL_IP": state["bind"], "SPARK_SCALA_VERSION": "2.12",
         "SPARK_WORKER_DIR": os.path.join(state["dir"], "work"), "SPARK_LOG_DIR": state["dir"]}
  host = state["host"]
  master = f"spark://{host}:{ports['spark_master']}"
  overview = lambda: processes.get_json(ports["spark_master_ui"], "/json/", host)
  processes.spawn(state, "master", [processes.java(), *SPARK_JAVA17, "-Xmx512m", "-cp", jars,
                                    "org.apache.spark.deploy.master.Master",
                                    "--host", host, "--port", str(ports["spark_master"]),
                                    "--webui-port", str(ports["spark_master_ui"])], env)
  processes.wait("Spark's master", lambda: overview() is not None, state, "master", timeout)
  # Each job stages the job server's whole classpath (hundreds of MB) into the worker's folder:
  # a finished job's copy is removed after 10 minutes (and all of them by `stop`).
  cleanup = ["-Dspark.worker.cleanup.enabled=true", "-Dspark.worker.cleanup.interval=120",
             "-Dspark.worker.cleanup.appDataTtl=600"]
  processes.spawn(state, "worker", [processes.java(), *SPARK_JAVA17, *cleanup, "-Xmx512m", "-cp", jars,
                                    "org.apache.spark.deploy.worker.Worker",
                                    "--host", host, "--webui-port", str(ports["spark_worker_ui"]),
                                    "--cores", str(slots), "--memory", "2g", master], env)
  processes.wait("Spark's worker",
                 lambda: any(w.get("state") == "ALIVE" for w in (overview() or {}).get("workers", [])),
                 state, "worker", timeout)
  state["ui"] = f"http://{host}:{ports['spark_master_ui']}"
  return master
