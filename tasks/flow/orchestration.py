"""Runs the DAGs through real Airflow on this machine: `airflow dags test` against a SQLite
metadata database under the slimline home. At scale, the same DAG files run on a deployed
Airflow; nothing here is needed there."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import resource
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pydantic import BaseModel

from tasks.core.errors import OrchestrationError, SlimlineError
from tasks.core.settings import Settings
from tasks.core.version import REPO_DIR

log = logging.getLogger(__name__)

DAGS_DIR = REPO_DIR / "dags"
FINISHED = re.compile(r"DagRun Finished: .*?run_id=(?P<run_id>[^,]+),.*?state=(?P<state>\w+)")
TASK_STATE = re.compile(r"Task instance state updated .*?new_state=(?P<state>\w+)")
# How a task's end is shown: a sensor rescheduled between pokes has not ended.
ENDINGS = {"success": "done", "up_for_reschedule": "waiting (rescheduled)", "up_for_retry": "will retry"}
TASK_END = re.compile(r"\[DAG TEST\] end task task_id=(?P<task>\S+)(?: map_index=(?P<index>-?\d+))?")
LINE_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)")
TASK_START = re.compile(r"\[DAG TEST\] starting task_id=(?P<task>\S+)(?: map_index=(?P<index>-?\d+))?")


class TaskTime(BaseModel):
    """One task instance of a `dags test` run: when it started and ended, in seconds from the
    start of the run (`dags test` runs one task at a time, so these add up to the run)."""

    task: str
    map_index: int = -1
    started: float
    ended: float

    @property
    def label(self) -> str:
        return self.task if self.map_index == -1 else f"{self.task}[{self.map_index}]"

    @property
    def seconds(self) -> float:
        return round(self.ended - self.started, 1)


class TaskClock:
    """Reads a `dags test` log line by line (as it is written, or afterwards) and times each task
    instance from the timestamps of its start and end lines."""

    def __init__(self, origin: datetime) -> None:
        self.origin = origin
        self.tasks: list[TaskTime] = []
        self._starts: dict[tuple[str, int], float] = {}

    def feed(self, line: str) -> TaskTime | None:
        """The task this line ends, if it ends one."""
        start, end = TASK_START.search(line), TASK_END.search(line)
        if not (start or end):
            return None
        stamp = LINE_TIME.match(line)
        at = datetime.fromisoformat(stamp[0]) if stamp else datetime.now(UTC)
        offset = round((at - self.origin).total_seconds(), 1)
        if start:
            self._starts[start["task"], int(start["index"] or -1)] = offset
            return None
        assert end is not None
        task, index = end["task"], int(end["index"] or -1)
        started = self._starts.pop((task, index), offset)
        self.tasks.append(TaskTime(task=task, map_index=index, started=started, ended=offset))
        return self.tasks[-1]


def task_times(log_path: Path) -> list[TaskTime]:
    """Each task's time in a finished `dags test` log, from its first line."""
    with log_path.open() as lines:
        first = next(lines, "")
        stamp = LINE_TIME.match(first)
        if not stamp:
            raise OrchestrationError(f"{log_path} does not start with a timestamped line")
        clock = TaskClock(datetime.fromisoformat(stamp[0]))
        for line in [first, *lines]:
            clock.feed(line)
    return clock.tasks


class DagRunResult(BaseModel):
    dag_id: str
    run_id: str
    state: str
    seconds: float
    peak_rss_mb: float
    log_path: Path
    tasks: list[TaskTime] = []

    @property
    def run_label(self) -> str:
        return f"airflow:{self.run_id}"


def airflow_environment(settings: Settings) -> dict[str, str]:
    home = settings.airflow_home
    if not settings.openlineage_transport:  # the default file transport makes no folder
        settings.lineage_file.parent.mkdir(parents=True, exist_ok=True)
    return {
        **os.environ,
        **settings.environment(),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_DIR),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        # The OpenLineage provider stays off unless a transport is configured.
        "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(settings.lineage_transport),
        "AIRFLOW__OPENLINEAGE__NAMESPACE": settings.openlineage_namespace,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def _airflow() -> str:
    return str(Path(sys.executable).with_name("airflow"))


def ensure_database(settings: Settings) -> None:
    """Create or upgrade the Airflow metadata DB (idempotent; fast when current)."""
    settings.airflow_home.mkdir(parents=True, exist_ok=True)
    marker = settings.airflow_home / ".migrated"
    if marker.exists():
        return
    proc = subprocess.run(
        [_airflow(), "db", "migrate"],
        env=airflow_environment(settings),
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise OrchestrationError(f"airflow db migrate failed: {tail[0]}")
    marker.touch()


# The DAGs whose steps run in the task image when `execution` is container or kubernetes.
STEP_DAGS = frozenset({"nightly_compression"})


def check_docker_api(settings: Settings) -> None:
    """With `execution: container`, fail before the run when nothing answers at `docker_url`
    (rather than in the first step, after the checkpoint's intake)."""
    if settings.execution != "container":
        return
    import docker

    try:
        docker.DockerClient(base_url=settings.docker_url, timeout=10).ping()
    except Exception as exc:  # the client raises DockerException, requests' and OS errors alike
        raise OrchestrationError(
            f"execution is container, but no Docker API answers at {settings.docker_url} "
            f"({type(exc).__name__}); start podman's with `make podman-api` or set SLIMLINE_DOCKER_URL"
        ) from None


def dags_test(settings: Settings, dag_id: str, conf: dict[str, Any], echo: bool = True) -> DagRunResult:
    """Run one real DAG run in-process with `airflow dags test`; show each task as it ends."""
    if dag_id in STEP_DAGS:
        check_docker_api(settings)
    ensure_database(settings)
    logs = settings.home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{dag_id}-{datetime.now(UTC):%Y%m%dT%H%M%S}.log"
    command = [_airflow(), "dags", "test", dag_id, "--conf", json.dumps(conf)]
    started = time.perf_counter()
    finished: dict[str, str] = {}
    clock = TaskClock(datetime.now(UTC))
    state = "success"
    with log_path.open("w") as sink:
        proc = subprocess.Popen(
            command,
            env=airflow_environment(settings),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            sink.write(line)
            if updated := TASK_STATE.search(line):
                state = updated["state"]
            if (done := clock.feed(line)) and echo:
                ending = ENDINGS.get(state, state)
                print(f"  [{done.ended:6.1f}s] {done.label} {ending} ({done.seconds:.1f}s)", flush=True)
            if match := FINISHED.search(line):
                finished = match.groupdict()
        returncode = proc.wait()
    seconds = time.perf_counter() - started
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if not finished:
        raise OrchestrationError(
            f"airflow dags test {dag_id} exited {returncode} without finishing a run; log: {log_path}"
        )
    result = DagRunResult(
        dag_id=dag_id,
        run_id=finished["run_id"],
        state=finished["state"],
        seconds=round(seconds, 1),
        peak_rss_mb=round(peak_kb / 1024, 1),
        log_path=log_path,
        tasks=clock.tasks,
    )
    if result.state != "success":
        raise OrchestrationError(
            f"DAG run {result.run_id} of {dag_id} ended {result.state}: {_first_error(log_path)}; "
            f"log: {log_path}"
        )
    return result


@contextmanager
def api_server(settings: Settings, env: dict[str, str] | None = None, timeout: float = 120) -> Iterator[str]:
    """Airflow's api-server on the metadata DB the DAG runs use, at `settings.airflow_api_url`
    (127.0.0.1 only), for the time of the block: where human-in-the-loop answers go (on Airflow
    3.3 `airflow dags test` waits for one and cannot give it). `env` adds variables (users of the
    simple auth manager, say). Yields the base URL once the API answers."""
    url = settings.airflow_api_url.rstrip("/")
    parsed = urlparse(url)
    if parsed.hostname not in ("127.0.0.1", "localhost") or parsed.port is None:
        raise OrchestrationError(f"airflow_api_url {url}: an embedded api-server listens on 127.0.0.1:PORT")
    ensure_database(settings)
    log_path = settings.home / "logs" / "api-server.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [_airflow(), "api-server", "--host", "127.0.0.1", "--port", str(parsed.port), "--workers", "1"]
    with log_path.open("a") as sink:
        proc = subprocess.Popen(
            command,
            env={**airflow_environment(settings), **(env or {})},
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its workers are stopped with it, as a group
        )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise OrchestrationError(f"airflow api-server exited {proc.returncode}; log: {log_path}")
            try:
                with urllib.request.urlopen(f"{url}/api/v2/version", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise OrchestrationError(f"airflow api-server did not answer on {url} in {timeout:.0f} s")
            time.sleep(0.5)
        log.info("airflow api-server on %s (log %s)", url, log_path)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _first_error(log_path: Path) -> str:
    """The first error a task raised, for the one-line message: slimline's own errors first
    (they say what is wrong and what is allowed), else any exception line."""
    ours = "|".join(sorted(_error_names(SlimlineError)))
    lines = log_path.read_text(errors="replace").splitlines()
    for pattern in (rf"\b({ours}): (.+)", r"(\w+Error|\w+Exception): (.+)"):
        for line in lines:
            if match := re.search(pattern, line):
                return f"{match[1]}: {match[2].strip()}"[:500]
    return "a task failed"


def _error_names(cls: type[SlimlineError]) -> set[str]:
    return {cls.__name__}.union(*(_error_names(sub) for sub in cls.__subclasses__()))
