"""Fleet test fixtures, shared by the agent tests, the fleet end-to-end test and the benchmark:

- `fleet_release` (session; `build_fleet_release` outside pytest): a real tiny nightly run, its INT8
  version built into engines for three CPU targets (two that need no special CPU flag, one that needs
  avx512_vnni, which the simulated device of `cpuinfo_file` lacks), a release key pair, and signed
  releases built once:
  good1, good2 (the same engines, a later number), bad (engines whose classifier weights are
  scrambled: they sign and pass their build check but disagree with the canary on a device),
  expired, vnni_only (an engine only for the target the simulated device cannot run), good3;
- helpers to publish a release and a desired state, and to run `slimline agent` as a process that
  cannot import PyTorch, transformers, MLflow or Airflow.

Release folders are numbered 1..6 in that order; `publish` puts one under any number of a
channel (the number in its release.json stays its own: how a replay is staged).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from tasks.core.settings import Settings
from tasks.fleet.channel import Channel, DesiredState
from tasks.fleet.spec import Health
from tasks.release.bundle import write_bundle
from tasks.release.keys import KeyPair, generate_key_pair, load_private_key
from tests.factories import make_checkpoint
from tests.tiny import CPU_TARGET, write_target, write_tiny_recipe
from tests.tiny import publish as publish_checkpoint

FLEET = "edge"
PLAIN_TARGETS = ("cpu-a", "cpu-b")  # need no CPU flag: every simulated device runs them
FLAG_TARGET = "cpu-vnni"  # needs avx512_vnni, which the simulated device lacks
PREFERENCE = [FLAG_TARGET, *PLAIN_TARGETS]  # the fleet prefers the one the device cannot run
SIMULATED_CPUINFO = (
    "model name\t: simulated edge CPU\nflags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma\n"
)
RELEASE_NAMES = ("good1", "good2", "bad", "expired", "vnni_only", "good3")
HEAVY = ("torch", "transformers", "mlflow", "airflow")
# `slimline` in a process where importing any heavy package fails: an agent that works here needs none.
LIGHT_MAIN = (
    "import sys\n"
    f"for name in {HEAVY!r}:\n"
    "    sys.modules[name] = None\n"
    "from tasks.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)
REPO = Path(__file__).resolve().parents[1]


@dataclass
class FleetRelease:
    settings: Settings
    keys: KeyPair
    model_version: str
    engines: dict[str, Path]  # target → engine folder
    releases: dict[str, Path] = field(default_factory=dict)  # name → folder holding bundle/ and bundle.sig

    def number(self, name: str) -> int:
        return int(self.releases[name].name)


def _write_targets(folder: Path) -> None:
    for name in PLAIN_TARGETS:
        write_target(folder, name)
    write_target(folder, FLAG_TARGET, requires=CPU_TARGET["requires"] | {"cpu_flags": ["avx512_vnni"]})


def scrambled_engine(settings: Settings, model_version: str, good: Path, dest: Path) -> Path:
    """An engine for the same target as `good`, built from the registered graph with its classifier
    weights rolled by one class: engine.json lists its real digests and keeps `good`'s passing
    check, so it bundles and signs, but every label it gives is another than the canary expects."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from tasks.engines.build import engine_files
    from tasks.engines.info import ENGINE_JSON, read_info, write_info
    from tasks.engines.runtimes import ort_cpu
    from tasks.engines.target import get_target
    from tasks.flow.engines import build_source
    from tasks.registry.versions import get_version, parse_version

    info = read_info(good)
    source = build_source(settings, get_version(settings, *parse_version(model_version)))
    graph = onnx.load(str(source.onnx))
    rolled = 0
    for tensor in graph.graph.initializer:
        array = numpy_helper.to_array(tensor)
        axes = [i for i, size in enumerate(array.shape) if size == len(info.labels)]
        if "classifier" in tensor.name and axes:
            tensor.CopyFrom(numpy_helper.from_array(np.roll(array, 1, axis=axes[-1]), tensor.name))
            rolled += 1
    assert rolled, "no classifier weights found to scramble"
    dest.mkdir(parents=True)
    scrambled = dest.parent / f"{dest.name}.onnx"
    onnx.save(graph, str(scrambled))
    target = get_target(settings.targets_dir, info.target)
    ort_cpu.build(source.model_copy(update={"onnx": scrambled}), target, dest)
    for name in info.files:
        if name != info.entry:
            shutil.copyfile(good / name, dest / name)
    write_info(dest, info.model_copy(update={"files": engine_files(dest)}))
    assert (dest / ENGINE_JSON).is_file()
    return dest


def build_fleet_release(base: Path, names: Sequence[str] = RELEASE_NAMES) -> FleetRelease:
    """The fleet release of `fleet_release` built under `base` (an empty folder), outside pytest too
    (bench/fleet.py): the releases in `names` only, in RELEASE_NAMES order, numbered from 1; the
    scrambled engines are built only when `bad` is among them."""
    from tasks.flow.engines import build_engines
    from tasks.flow.local import run_local

    wanted = [n for n in RELEASE_NAMES if n in names]
    home = base / "home"
    home.mkdir()
    _write_targets(base / "targets")
    settings = Settings(home=home, targets_dir=base / "targets")
    recipe = write_tiny_recipe(base / "recipe")
    data = yaml.safe_load(recipe.read_text())
    data["targets"] = [{"name": t} for t in (*PLAIN_TARGETS, FLAG_TARGET)]
    recipe.write_text(yaml.safe_dump(data))
    checkpoint = make_checkpoint(base / "ckpt")
    summary = run_local(settings, recipe, publish_checkpoint(settings, checkpoint, "nightly/tiny"))
    model_version = next(
        f"{summary.registered_model}/{row.version}" for row in summary.rows if row.name == "onnx-int8-dynamic"
    )
    outcomes = build_engines(settings, model_version, [*PLAIN_TARGETS, FLAG_TARGET])
    engines = {o.target: o.path for o in outcomes if o.path is not None}
    assert set(engines) == {*PLAIN_TARGETS, FLAG_TARGET}, [o.reason for o in outcomes]
    bad = (
        {t: scrambled_engine(settings, model_version, engines[t], base / "bad" / t) for t in PLAIN_TARGETS}
        if "bad" in wanted
        else {}
    )
    keys = generate_key_pair(home / "keys" / "release.key")
    built = FleetRelease(settings=settings, keys=keys, model_version=model_version, engines=engines)
    canary = engines[PLAIN_TARGETS[0]] / "canary.json"
    now = datetime.now(UTC)
    plans: dict[str, tuple[dict[str, Path], datetime, timedelta]] = {
        "good1": (engines, now, timedelta(days=30)),
        "good2": (engines, now, timedelta(days=30)),
        "bad": ({**engines, **bad}, now, timedelta(days=30)),
        "expired": (engines, now - timedelta(days=2), timedelta(days=1)),
        "vnni_only": ({FLAG_TARGET: engines[FLAG_TARGET]}, now, timedelta(days=30)),
        "good3": (engines, now, timedelta(days=30)),
    }
    for name in wanted:
        chosen, created, expires_in = plans[name]
        bundle = write_bundle(
            settings.releases_dir,
            fleet=FLEET,
            model_version=model_version,
            lineage={"test": name},
            engines=chosen,
            canary=canary,
            private_key=keys.private,
            expires_in=expires_in,
            now=created,
        )
        built.releases[name] = bundle.parent
    assert [built.number(n) for n in wanted] == list(range(1, len(wanted) + 1))
    return built


@pytest.fixture(scope="session")
def fleet_release(tmp_path_factory: pytest.TempPathFactory) -> FleetRelease:
    return build_fleet_release(tmp_path_factory.mktemp("fleet-release"))


# Publishing


def publish(channel: Channel, fleet_release: FleetRelease, name: str, number: int | None = None) -> int:
    """Put a release on the channel under its own number (or `number`); return the number used."""
    number = number or fleet_release.number(name)
    channel.publish_release(fleet_release.releases[name], number)
    return number


def desire(
    channel: Channel,
    key: Path,
    version: int,
    release: int | None,
    *,
    devices: dict[str, int] | None = None,
    targets: list[str] | None = None,
    health: Health | None = None,
    issued_at: datetime | None = None,
    lifetime: timedelta = timedelta(days=1),
) -> DesiredState:
    """Sign (with the private key `key`) and publish a desired state."""
    issued = issued_at or datetime.now(UTC)
    state = DesiredState(
        fleet=channel.fleet,
        version=version,
        issued_at=issued,
        expires_at=issued + lifetime,
        release=release,
        devices=devices or {},
        targets=PREFERENCE if targets is None else targets,
        health=health or Health(),
        note="test",
    )
    channel.publish_desired(state, load_private_key(key))
    return state


# Agent processes


def cpuinfo_file(folder: Path, text: str = SIMULATED_CPUINFO) -> Path:
    path = folder / "cpuinfo"
    path.write_text(text)
    return path


def agent_argv(
    fleet_release: FleetRelease,
    root: Path,
    channel_uri: str,
    *,
    device: str = "dev-1",
    fleet: str = FLEET,
    poll_seconds: float = 0.2,
    cpuinfo: str = SIMULATED_CPUINFO,
    labels: tuple[str, ...] = ("site=lab",),
    extra: list[str] | None = None,
) -> list[str]:
    """`slimline agent` arguments for a simulated device (CPU flags from a file beside its root)."""
    root.parent.mkdir(parents=True, exist_ok=True)
    return [
        "agent",
        "--fleet",
        fleet,
        "--device-id",
        device,
        "--root",
        str(root),
        "--channel",
        channel_uri,
        "--trusted-key",
        str(fleet_release.keys.public),
        "--cpuinfo",
        str(cpuinfo_file(root.parent, cpuinfo)),
        "--poll-seconds",
        str(poll_seconds),
        *[arg for label in labels for arg in ("--label", label)],
        *(extra or []),
    ]


def agent_env(s3_endpoint: str | None = None) -> dict[str, str]:
    env = dict(os.environ) | {"PYTHONPATH": str(REPO)}
    if s3_endpoint:
        env["SLIMLINE_S3_ENDPOINT_URL"] = s3_endpoint
    return env


def light_command(argv: list[str]) -> list[str]:
    """The command running `slimline argv...` where PyTorch, transformers, MLflow and Airflow cannot load."""
    return [sys.executable, "-c", LIGHT_MAIN, *argv]


def run_once(
    argv: list[str], env: dict[str, str], killpoint: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`slimline agent ... --once` to the end (or to its killpoint's SIGKILL)."""
    command = (
        [sys.executable, "-m", "tests.killpoint", killpoint, *argv, "--once"]
        if killpoint
        else light_command([*argv, "--once"])
    )
    return subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)


class AgentProcess:
    """A running `slimline agent` process and its HTTP port."""

    def __init__(self, argv: list[str], root: Path, env: dict[str, str]) -> None:
        self.root = root
        (root / "agent.json").unlink(missing_ok=True)
        self.log = root.parent / f"{root.name}.log"
        self.process = subprocess.Popen(
            light_command(argv), env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=self.log.open("w")
        )
        self.port = int(wait_for(self._port, 60, "the agent to write agent.json"))

    def _port(self) -> int | None:
        if self.process.poll() is not None:
            raise AssertionError(f"agent exited {self.process.returncode}: {self.log.read_text()[-2000:]}")
        path = self.root / "agent.json"
        return json.loads(path.read_text())["port"] if path.is_file() else None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str) -> tuple[int, dict[str, Any]]:
        return http("GET", self.url(path))

    def predict(self, texts: list[str]) -> tuple[int, dict[str, Any]]:
        return http("POST", self.url("/predict"), {"texts": texts})

    def version(self) -> dict[str, Any]:
        return self.get("/version")[1]

    def stop(self) -> int:
        """SIGTERM, and the exit status."""
        if self.process.poll() is None:
            self.process.terminate()
        return self.process.wait(timeout=30)


def http(
    method: str, url: str, document: Any = None, body: bytes | None = None
) -> tuple[int, dict[str, Any]]:
    data = body if body is not None else (json.dumps(document).encode() if document is not None else None)
    request = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def wait_for(probe: Callable[[], Any], timeout: float, what: str) -> Any:
    """The first truthy result of `probe`, polled every 50 ms; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
