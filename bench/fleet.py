"""Fleet load benchmark: simulated fleets of edge devices running the agent's real state machine
(`tasks.fleet.agent.Agent.poll_once`, in-process, one Agent object per device, one shared channel
client) against a channel on moto's S3 server on 127.0.0.1 (its own process), while the real
rollout controller (`start_rollout`, then `advance` once per poll interval, as the DAG's sensor
would) drives a real signed release of a tiny model through the waves.

Time is simulated: a virtual clock, each device polling at its own jittered interval; a "cycle" is
one poll interval, and nothing sleeps. What each device does at a poll is real: the signed desired
state fetched (a 304 when unchanged) and verified, its status report written, and the install
(download, signature and digest verification, ONNX Runtime load, canary check) when its release
changes. Every S3 request is counted on the clients by kind (botocore `after-call` hooks).

Every device's install is real and timed; it is the expensive part of simulating a fleet here
(moto answers a few hundred requests a second on this machine), which is why 10,000 devices take
about an hour (`--sizes 10000`).

Benchmark-side choices: after a device reports a release active, its loaded engine is dropped (the
slot emptied) so thousands of ONNX Runtime sessions are never held at once; identical desired
states are shared between devices (one parsed copy per ETag; the agent never mutates it).

    python bench/fleet.py                    # 100 and 1,000 devices: bench/results/fleet.json + .png
    python bench/fleet.py --sizes 10000 --keep   # add 10,000 devices (about an hour here)
    python bench/fleet.py --chart            # redraw the chart from the JSON only
"""

from __future__ import annotations

import argparse
import heapq
import json
import logging
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, cast

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
JSON_OUT = RESULTS / "fleet.json"
PNG_OUT = RESULTS / "fleet.png"
S3_GET_PER_1000 = 0.0004  # USD, S3 Standard us-east-1 list price (GET, HEAD)
S3_PUT_PER_1000 = 0.005  # USD, S3 Standard us-east-1 list price (PUT, LIST)
S3_PREFIX_GET_PER_S = 5500  # S3's documented request rate per prefix (GET/HEAD)
S3_PREFIX_PUT_PER_S = 3500  # S3's documented request rate per prefix (PUT/POST/DELETE/LIST)

log = logging.getLogger("bench.fleet")


# Request metering


def request_kind(operation: str, key: str, status: int) -> str:
    """A request's kind for the tables: what it touched, the verb, and a non-2xx status."""
    name = key.rsplit("/", 1)[-1]
    if "/releases/" in key or key.endswith("/releases"):
        what = "release file"
    elif "/rollouts" in key:
        what = "rollout record"
    elif name in ("desired.json", "status.json", "enrollment.json"):
        what = name.removesuffix(".json")
    elif "/devices" in key:
        what = "devices"
    else:
        what = "other"
    verb = {"GetObject": "GET", "HeadObject": "HEAD", "PutObject": "PUT", "ListObjectsV2": "LIST"}.get(
        operation, operation
    )
    return f"{what} {verb}" + (f" {status}" if status >= 300 else "")


@dataclass
class Meter:
    """S3 requests by side (devices, controller) and kind; bytes are bodies (Content-Length)."""

    requests: Counter[str] = field(default_factory=Counter)
    bytes: Counter[str] = field(default_factory=Counter)

    def attach(self, client: Any, side: str) -> None:
        def stash(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
            context["bench_key"] = str(params.get("Key") or params.get("Prefix") or "")
            context["bench_sent"] = _body_size(params.get("Body"))

        def done(http_response: Any, model: Any, context: dict[str, Any], **_: Any) -> None:
            status = int(http_response.status_code)
            kind = f"{side}: {request_kind(model.name, context.get('bench_key', ''), status)}"
            received = (
                int(http_response.headers.get("content-length") or 0) if model.name == "GetObject" else 0
            )
            self.requests[kind] += 1
            self.bytes[kind] += received + int(context.get("bench_sent", 0))

        client.meta.events.register("before-parameter-build.s3", stash)
        client.meta.events.register("after-call.s3", done)

    def snapshot(self) -> tuple[Counter[str], Counter[str]]:
        return Counter(self.requests), Counter(self.bytes)


def _body_size(body: Any) -> int:
    """A request body's size: bytes, or the file-like object botocore turns them into."""
    if isinstance(body, bytes | bytearray):
        return len(body)
    if hasattr(body, "getbuffer"):
        return len(body.getbuffer())
    return 0


def delta(after: Counter[str], before: Counter[str]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in sorted(after) if after[k] - before[k]}


# The moto server, in its own process so the simulation and the server use both cores


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def moto_server() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 in a child process; its endpoint URL."""
    import boto3

    port = _free_port()
    code = (
        "import logging, time\nlogging.disable(logging.CRITICAL)\n"
        "from moto.server import ThreadedMotoServer\n"
        f"ThreadedMotoServer(ip_address='127.0.0.1', port={port}, verbose=False).start()\n"
        "while True:\n    time.sleep(3600)\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        client = boto3.client("s3", endpoint_url=endpoint)
        for _ in range(300):
            try:
                client.list_buckets()
                break
            except Exception:  # not listening yet
                time.sleep(0.1)
        yield endpoint
    finally:
        process.terminate()
        process.wait(timeout=30)


# Installs: every one real, timed by phase


@dataclass
class InstallCost:
    """Timings of real installs, by phase (seconds), and one real install's requests."""

    download_verify: list[float] = field(default_factory=list)
    load: list[float] = field(default_factory=list)
    canary_check: list[float] = field(default_factory=list)
    requests: Counter[str] = field(default_factory=Counter)
    bytes: Counter[str] = field(default_factory=Counter)


class Installs:
    """Times the agent module's install, engine load and health check by phase: the real functions,
    called as the agent calls them."""

    def __init__(self, cost: InstallCost) -> None:
        self.cost = cost

    @contextmanager
    def timed(self) -> Iterator[None]:
        import tasks.fleet.agent as agent_module

        phases = {
            "install_release": self.cost.download_verify,
            "load_serving": self.cost.load,
            "check_health": self.cost.canary_check,
        }
        saved: dict[str, Callable[..., Any]] = {n: getattr(agent_module, n) for n in phases}
        for name, into in phases.items():
            setattr(agent_module, name, partial(self._timed, into, saved[name]))
        try:
            yield
        finally:
            for name, fn in saved.items():
                setattr(agent_module, name, fn)

    @staticmethod
    def _timed(into: list[float], fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            into.append(time.perf_counter() - began)


def probe_install(built: Any, endpoint: str, work: Path, caps: Any, times: int) -> InstallCost:
    """Real installs of release 1 on a probe channel, outside the fleet: one install's requests by
    kind, measured alone, and the install's phase timings."""
    import boto3

    from tasks.core.store import open_store
    from tasks.engines.canary import read_canary
    from tasks.fleet.channel import Channel
    from tasks.fleet.device import DeviceDir
    from tasks.fleet.health import check_health
    from tasks.fleet.install import install_release
    from tasks.fleet.serve import load_serving
    from tasks.fleet.spec import Health
    from tests.fleet_fixtures import FLEET, PREFERENCE, publish

    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="probe")
    store = open_store("s3://probe/channel", endpoint)
    meter = Meter()
    meter.attach(cast(Any, store).client, "devices")
    channel = Channel(store, FLEET)
    publish(channel, built, "good1", 1)
    cost = InstallCost()
    now = datetime.now(UTC)
    for index in range(times):
        before = meter.snapshot()
        installed = Installs._timed(
            cost.download_verify,
            install_release,
            channel,
            1,
            DeviceDir(work / "probe" / f"dev-{index}"),
            built.keys.public,
            preference=PREFERENCE,
            caps=caps,
            high_water=0,
            now=now,
        )
        after = meter.snapshot()
        cost.requests, cost.bytes = Counter(delta(after[0], before[0])), Counter(delta(after[1], before[1]))
        serving = Installs._timed(cost.load, load_serving, installed, now)
        canary = read_canary(installed.folder / installed.release.canary.file)
        report = Installs._timed(
            cost.canary_check, check_health, serving.predictor, serving.info, canary, Health()
        )
        if not report.passed:
            raise SystemExit(f"the probe install's canary check failed: {report.reason}")
    return cost


# The fleet


def bench_fleet_spec() -> Any:
    """The simulated fleet: 5% of devices in the canary ring (wave 1), a quarter of the rest
    (wave 2), then the rest; the fixtures' three CPU targets, one of which devices cannot run."""
    from tasks.fleet.spec import Fleet
    from tests.fleet_fixtures import FLEET, PREFERENCE

    return Fleet.model_validate(
        {
            "name": FLEET,
            "targets": PREFERENCE,
            "release_expiry_days": 30,
            "waves": [
                {"name": "canary", "selector": {"ring": "canary"}},
                {"name": "early", "limit": "25%"},
            ],
            "success_threshold": 100,
            "wave_timeout_minutes": 60,
        }
    )


@dataclass
class Clock:
    """Simulated time: seconds from the first publish."""

    origin: datetime

    def at(self, t: float) -> datetime:
        return self.origin + timedelta(seconds=t)

    def seconds(self, when: datetime) -> float:
        return (when - self.origin).total_seconds()


@dataclass
class Run:
    """One fleet's simulation state."""

    size: int
    poll_seconds: float
    agents: list[Any]
    meter: Meter
    clock: Clock
    heap: list[tuple[float, int]] = field(default_factory=list)
    done_at: dict[int, float] = field(default_factory=dict)
    shared_desired: dict[str, Any] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    polls: int = 0


def make_agents(
    size: int, args: argparse.Namespace, built: Any, channel: Any, caps: Any, root: Path
) -> list[Any]:
    from tasks.fleet.agent import Agent, agent_config
    from tests.fleet_fixtures import FLEET

    agents = []
    for index in range(size):
        device = f"dev-{index:06d}"
        ring = "canary" if index % 20 == 0 else "main"
        config = agent_config(
            fleet=FLEET,
            device_id=device,
            root=root / device,
            channel_uri=channel.store.uri,
            trusted_key=built.keys.public,
            labels={"ring": ring},
            poll_seconds=args.poll_seconds,
        )
        agents.append(
            Agent(config, channel=channel, capabilities=caps, rng=random.Random(args.seed * 7919 + index))
        )
    return agents


def poll_device(run: Run, t: float, index: int) -> None:
    """One device's poll at simulated time `t`; schedules its next one."""
    from tasks.core.errors import BundleRefused, ConfigError, EngineError

    agent = run.agents[index]
    began = time.perf_counter()
    try:
        poll = agent.poll_once(run.clock.at(t))
        run.outcomes[poll.outcome] += 1
    except (ConfigError, EngineError, BundleRefused) as exc:  # as Agent.run survives a bad poll
        run.errors[type(exc).__name__] += 1
        poll = None
    took = time.perf_counter() - began
    run.polls += 1
    busy = 0.0
    if poll is not None and poll.outcome in ("active", "failed", "rejected"):
        busy = took
    if poll is not None and poll.outcome == "active":
        run.done_at[index] = t + busy
        _serving, previous = agent.slot.current()
        agent.slot.swap(None, previous)  # benchmark-side: never hold thousands of ORT sessions
    if agent.etag is not None and agent.desired is not None:
        agent.desired = run.shared_desired.setdefault(agent.etag, agent.desired)
    heapq.heappush(run.heap, (t + busy + agent.next_wait(), index))


def controller_step(run: Run, name: str, t: float, step: Callable[[], Any]) -> tuple[Any, dict[str, Any]]:
    """One call of the rollout controller at simulated time `t`, timed, with its requests."""
    before = run.meter.snapshot()
    began = time.perf_counter()
    record = step()
    seconds = time.perf_counter() - began
    after = run.meter.snapshot()
    side = "controller: "
    requests = {k.removeprefix(side): v for k, v in delta(after[0], before[0]).items() if k.startswith(side)}
    sent = {k.removeprefix(side): v for k, v in delta(after[1], before[1]).items() if k.startswith(side)}
    wave = record.current_wave()
    return record, {
        "cycle": round(t / run.poll_seconds),
        "call": name,
        "seconds": round(seconds, 4),
        "state": record.state,
        "wave": wave.name if wave is not None else None,
        "assigned": sum(len(w.assigned) for w in record.waves),
        "requests": requests,
        "desired_bytes": sent.get("desired PUT", 0),
    }


def cycle_row(
    run: Run, cycle: int, phase: str, before: tuple[Counter[str], ...], polls: int
) -> dict[str, Any]:
    after = run.meter.snapshot()
    requests = delta(after[0], before[0])
    return {
        "cycle": cycle,
        "phase": phase,
        "polls": polls,
        "devices_active": len(run.done_at),
        "requests": requests,
        "bytes": sum(delta(after[1], before[1]).values()),
        "device_requests": sum(v for k, v in requests.items() if k.startswith("devices")),
        "controller_requests": sum(v for k, v in requests.items() if k.startswith("controller")),
    }


def simulate(
    size: int,
    args: argparse.Namespace,
    built: Any,
    endpoint: str,
    work: Path,
    caps: Any,
    probe: InstallCost,
) -> dict[str, Any]:
    """Start `size` agents, roll release 1 out to them wave by wave, then idle a few cycles."""
    import boto3
    from tqdm import tqdm

    from tasks.core.store import open_store
    from tasks.fleet.channel import Channel
    from tasks.fleet.rollout import UNDER_WAY, advance, start_rollout
    from tests.fleet_fixtures import FLEET

    bucket = f"fleet-{size}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    meter = Meter()
    stores = {side: open_store(f"s3://{bucket}/channel", endpoint) for side in ("devices", "controller")}
    for side, store in stores.items():
        meter.attach(cast(Any, store).client, side)
    channel, control = Channel(stores["devices"], FLEET), Channel(stores["controller"], FLEET)
    period = args.poll_seconds
    rng = random.Random(args.seed + size)  # the devices' first poll within the first interval
    fleet = bench_fleet_spec()
    agents = make_agents(size, args, built, channel, caps, args.devices_in / f"fleet-{size}")
    run = Run(size, period, agents, meter, Clock(datetime.now(UTC).replace(microsecond=0)))
    cost = InstallCost(requests=probe.requests, bytes=probe.bytes)
    with Installs(cost).timed():
        before = meter.snapshot()
        began = time.perf_counter()
        for agent in tqdm(agents, desc=f"{size:>6} devices: start", unit="device", leave=False):
            agent.start(run.clock.at(-period))
        start = {
            "seconds": round(time.perf_counter() - began, 2),
            "requests": delta(meter.snapshot()[0], before[0]),
        }
        for index in range(size):
            heapq.heappush(run.heap, (-period + rng.uniform(0, period), index))
        record: Any = None
        tick, settled, concluded, idle_left = 0.0, False, None, args.idle_cycles
        cycles: list[dict[str, Any]] = []
        steps: list[dict[str, Any]] = []
        before, polls_before = meter.snapshot(), 0
        wall0, wall_all = time.perf_counter(), None
        bar = tqdm(total=size, desc=f"{size:>6} devices: rollout", unit="device", leave=False)
        while True:
            if run.heap[0][0] < tick:
                t, index = heapq.heappop(run.heap)
                done = len(run.done_at)
                poll_device(run, t, index)
                if len(run.done_at) > done:
                    bar.update(len(run.done_at) - done)
                    if len(run.done_at) == size:
                        wall_all = time.perf_counter() - wall0
                continue
            phase = "before" if tick <= 0 else ("idle" if settled else "rollout")
            cycles.append(cycle_row(run, round(tick / period) - 1, phase, before, run.polls - polls_before))
            bar.set_postfix(cycle=round(tick / period))
            if settled:
                if idle_left == 0:
                    break
                idle_left -= 1
            if tick / period > args.max_cycles:
                log.warning("%s devices: stopped after %s cycles", size, args.max_cycles)
                break
            before, polls_before = meter.snapshot(), run.polls
            if record is None:
                wall0 = time.perf_counter()
                bundle = built.releases["good1"] / "bundle"
                record, step = controller_step(
                    run,
                    "start_rollout",
                    tick,
                    partial(start_rollout, control, fleet, bundle, built.keys.private, run.clock.at(tick)),
                )
                steps.append(step)
            if record.state in UNDER_WAY:
                record, step = controller_step(
                    run,
                    "advance",
                    tick,
                    partial(advance, control, fleet, record, built.keys.private, run.clock.at(tick)),
                )
                steps.append(step)
                if record.state not in UNDER_WAY:
                    concluded = tick
            elif (
                concluded is not None
                and concluded < tick
                and (len(run.done_at) == size or record.state != "succeeded")
            ):
                settled = True
            tick += period
        bar.close()
    result = summarise(run, record, cycles, steps, start, cost, wall_all)
    shutil.rmtree(args.devices_in / f"fleet-{size}", ignore_errors=True)
    return result


def _per_cycle(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Mean requests per cycle by kind over `rows`."""
    total: Counter[str] = Counter()
    for row in rows:
        total.update(row["requests"])
    return {k: round(v / len(rows), 2) for k, v in sorted(total.items())} if rows else {}


def _median(values: list[float], digits: int = 4) -> float | None:
    return round(statistics.median(values), digits) if values else None


def summarise(
    run: Run,
    record: Any,
    cycles: list[dict[str, Any]],
    steps: list[dict[str, Any]],
    start: dict[str, Any],
    cost: InstallCost,
    wall_all: float | None,
) -> dict[str, Any]:
    period, size = run.poll_seconds, run.size
    rollout = [c for c in cycles if c["phase"] == "rollout"]
    idle = [c for c in cycles if c["phase"] == "idle"]
    all_active = max(run.done_at.values()) if len(run.done_at) == size else None
    advances = [s for s in steps if s["call"] == "advance"]
    waves = []
    for wave in record.waves:
        started = run.clock.seconds(wave.started_at) / period if wave.started_at else None
        decided = run.clock.seconds(wave.decided_at) / period if wave.decided_at else None
        waves.append(
            {
                "name": wave.name,
                "devices": len(wave.devices),
                "published_cycle": started,
                "decided_cycle": decided,
                "decision": wave.decision,
            }
        )
    real = len(cost.download_verify)
    return {
        "devices": size,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "state": record.state,
        "reason": record.reason,
        "installs": {
            "real": real,
            "median_ms": {
                "download_verify": _ms(cost.download_verify),
                "load": _ms(cost.load),
                "canary_check": _ms(cost.canary_check),
            },
            "requests_each": dict(cost.requests),
            "bytes_each": sum(cost.bytes.values()),
        },
        "rollout": {
            "cycles_to_all_active": round(all_active / period, 2) if all_active is not None else None,
            "simulated_seconds_to_all_active": round(all_active, 1) if all_active is not None else None,
            "controller_concluded_cycle": next(
                (s["cycle"] for s in steps if s["state"] not in ("pending", "rolling")), None
            ),
            "wall_seconds_to_all_active": round(wall_all, 1) if wall_all is not None else None,
            "desired_publishes": sum(s["requests"].get("desired PUT", 0) for s in steps),
            "largest_desired_bytes": max((s["desired_bytes"] for s in steps), default=0),
            "waves": waves,
        },
        "requests": {
            "rollout_cycles": len(rollout),
            "per_cycle_median": _median(
                [c["device_requests"] + c["controller_requests"] for c in rollout], 1
            ),
            "per_cycle_max": max(
                (c["device_requests"] + c["controller_requests"] for c in rollout), default=0
            ),
            "per_device_per_cycle_median": _median([c["device_requests"] / size for c in rollout], 3),
            "per_cycle_by_kind_mean": _per_cycle(rollout),
            "idle_per_device_per_cycle": _median([c["device_requests"] / size for c in idle], 3),
            "idle_per_cycle_by_kind_mean": _per_cycle(idle),
            "rollout_total": sum(c["device_requests"] + c["controller_requests"] for c in rollout),
            "rollout_bytes": sum(c["bytes"] for c in rollout),
        },
        "start": start,
        "controller": {
            "start_rollout_seconds": next(
                (s["seconds"] for s in steps if s["call"] == "start_rollout"), None
            ),
            "advance_seconds_median": _median([s["seconds"] for s in advances]),
            "advance_seconds_max": max((s["seconds"] for s in advances), default=None),
            "status_gets_per_advance_max": max(
                (s["requests"].get("status GET", 0) for s in advances), default=0
            ),
            "steps": steps,
        },
        "polls": run.polls,
        "outcomes": dict(run.outcomes),
        "poll_errors": dict(run.errors),
        "rss_mb": _rss_mb(),
        "cycles": cycles,
    }


def _ms(values: list[float]) -> float | None:
    return round(statistics.median(values) * 1000, 2) if values else None


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


# Running


def run(args: argparse.Namespace) -> dict[str, Any]:
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    os.environ["HF_HUB_OFFLINE"] = "1"
    sys.path.insert(0, str(REPO))
    import onnxruntime

    from tasks.engines.capabilities import read_capabilities
    from tests.fleet_fixtures import build_fleet_release, cpuinfo_file

    machine = read_capabilities()
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        work = Path(tmp)
        began = time.perf_counter()
        log.info("building a signed release of a tiny model (a tiny nightly run and its engines)")
        (work / "release").mkdir()
        built = build_fleet_release(work / "release", ["good1"])
        build_seconds = time.perf_counter() - began
        caps = read_capabilities(cpuinfo_file(work))  # the simulated device: no avx512_vnni
        with moto_server() as endpoint:
            probe = probe_install(built, endpoint, work, caps, args.probe_installs)
            fleets = []
            args.devices_in = Path(tempfile.mkdtemp(prefix="bench-fleet-", dir=args.device_root))
            try:
                for size in args.sizes:
                    fleets.append(simulate(size, args, built, endpoint, work, caps, probe))
                    print(one_line(fleets[-1]), file=sys.stderr)
            finally:
                shutil.rmtree(args.devices_in, ignore_errors=True)
    results: dict[str, Any] = {
        "machine": {
            "cpu": machine.cpu_model,
            "cores": machine.cpu_count,
            "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__,
        },
        "method": method(args),
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "release_build_seconds": round(build_seconds, 1),
        "probe_install_ms": {
            "download_verify": _ms(probe.download_verify),
            "load": _ms(probe.load),
            "canary_check": _ms(probe.canary_check),
            "installs": args.probe_installs,
        },
        "fleets": fleets,
    }
    results["notes"] = notes(results, args.poll_seconds)
    return results


def method(args: argparse.Namespace) -> str:
    return (
        f"Agents (tasks.fleet.agent.Agent) poll every {args.poll_seconds:g} s ±20% of simulated time; the "
        "controller (start_rollout, then advance) runs once per poll interval; cycle = one poll interval, "
        "counted from the first desired-state publish (cycle 0). Waves: canary ring (5% of devices), 25% of "
        "the rest, the rest; no disruption budget; success threshold 100%. Fresh devices (no release yet) "
        "get release 1; every install is real (download, verification, ONNX Runtime load, canary check), "
        "its wall time added to the simulated clock. Requests counted on the boto3 "
        "clients (after-call hooks; retries not counted apart); bytes are bodies. moto in its own process; "
        "agents run one after another in one process, so wall seconds are this machine's cost of simulating "
        "the fleet, not a real fleet's rollout time (that is the simulated time)."
    )


def one_line(fleet: dict[str, Any]) -> str:
    r, q, c = fleet["rollout"], fleet["requests"], fleet["controller"]
    return (
        f"{fleet['devices']:>7} devices  {fleet['state']:<9} "
        f"all active at cycle {r['cycles_to_all_active']}  "
        f"(wall {r['wall_seconds_to_all_active']} s)  requests/cycle median {q['per_cycle_median']} "
        f"({q['per_device_per_cycle_median']}/device; idle {q['idle_per_device_per_cycle']})  "
        f"advance median {c['advance_seconds_median']} s max {c['advance_seconds_max']} s  "
        f"installs {fleet['installs']['real']}"
    )


def notes(results: dict[str, Any], poll_seconds: float, target: int = 100_000) -> dict[str, Any]:
    """What `target` devices would take, projected from the largest fleet measured (linear per-device
    rates; the desired state's size and the controller's reads scale with the fleet)."""
    from tasks.release.metadata import MAX_METADATA_BYTES

    largest = max(results["fleets"], key=lambda f: f["devices"])
    size, q, r, c = largest["devices"], largest["requests"], largest["rollout"], largest["controller"]
    scale = target / size
    idle_rate = (q["idle_per_device_per_cycle"] or 0) * target / poll_seconds
    rollout_rate = (q["per_device_per_cycle_median"] or 0) * target / poll_seconds
    entry_bytes = r["largest_desired_bytes"] / size
    desired_at_target = entry_bytes * target
    gets = c["status_gets_per_advance_max"]
    advance_max = c["advance_seconds_max"] or 0.0
    wall = r["wall_seconds_to_all_active"] or 0.0
    moto_rate = q["rollout_total"] / wall if wall else 0.0
    idle_day_gets = idle_rate * 86400
    projected = {
        "from_fleet": size,
        "idle_requests_per_s": round(idle_rate, 1),
        "rollout_requests_per_s_median": round(rollout_rate, 1),
        "desired_state_bytes_at_widest": round(desired_at_target),
        "desired_state_limit_bytes": MAX_METADATA_BYTES,
        "desired_bytes_downloaded_per_wide_publish": round(desired_at_target * target),
        "status_gets_per_advance": round(gets * scale),
        "advance_seconds": round(advance_max * scale, 1),
        "moto_requests_per_wall_s_measured": round(moto_rate, 1),
        "idle_usd_per_day_s3_get": round(idle_day_gets / 1000 * S3_GET_PER_1000, 2),
        "rollout_usd_s3": round((q["rollout_total"] * scale) / 1000 * S3_PUT_PER_1000, 2),
    }
    text = [
        f"Idle, {target:,} devices polling every {poll_seconds:g} s make about {idle_rate:,.0f} "
        "requests/s, nearly all conditional GETs of one key, desired.json (S3 serves about "
        f"{S3_PREFIX_GET_PER_S:,} GET/s per prefix, then answers 503 SlowDown): about "
        f"{idle_day_gets / 1e6:,.0f} M GETs, ${projected['idle_usd_per_day_s3_get']:,} a day at S3 list "
        "prices. Longer polls (or long-poll/push notification) scale it down linearly; a CDN in front of "
        "desired.json (signed, so a cache cannot forge it) takes it off S3.",
        "During a rollout every publish of the desired state is fetched whole by every device and makes "
        "each device write a status report. The desired state names each assigned device "
        f"({entry_bytes:.0f} bytes each): at {target:,} devices about {desired_at_target / 1e6:.1f} MB at "
        f"its widest (the signed-document limit is {MAX_METADATA_BYTES / 1e6:.1f} MB), so one wide publish "
        f"moves about {desired_at_target * target / 1e9:,.0f} GB to devices: bytes grow with the square of "
        "the fleet. What to change: name waves, not devices (a device knows its labels; a wave's share can "
        "be a hash bucket of the device id), or a desired state per wave or per device, so a publish stays "
        "small and a device fetches only its own.",
        "The controller reads the status.json of every assigned device of the current wave at each "
        f"advance: {gets:,} GETs at {size:,} devices ({advance_max:.1f} s), so about "
        f"{projected['status_gets_per_advance']:,} GETs and {projected['advance_seconds']:,} s per advance "
        f"at {target:,} from one thread. What to change: skip devices already judged (an outcome is final "
        "within a rollout), read in parallel, or aggregate reports as they arrive (a per-wave log, a queue "
        "such as SQS or IoT Core); list devices by wave prefix rather than the whole devices/ tree.",
        f"moto served about {moto_rate:,.0f} requests per wall second here (its own process and core, "
        "beside the agents' CPU): a stand-in for S3's protocol, not a model of its latency or throughput. "
        "Real S3 takes status PUTs on per-device keys (spread over prefixes) and charges "
        f"${S3_PUT_PER_1000}/1,000 PUTs: this rollout's requests would cost at most about "
        f"${projected['rollout_usd_s3']} at {target:,} devices (all billed as PUTs; most are GETs).",
        "Bundles: each device downloads only its target's engine plus the metadata to choose it (one GET "
        "per file, 12 here); at 100,000 devices that is the engine's size times "
        "the fleet, best served from a CDN or regional mirror. The install's own work (verify, load, canary "
        "check) runs on each device, in parallel across the fleet.",
    ]
    return {"projected_at": target, "projection": projected, "text": text}


# The chart


def _kind_group(kind: str) -> str:
    side, _, what = kind.partition(": ")
    if side == "controller":
        return "controller (all)"
    if what.startswith("release file"):
        return "release downloads"
    if what.startswith("desired GET 304"):
        return "desired GET 304"
    if what.startswith("desired GET"):
        return "desired GET 200/404"
    if what.startswith("status PUT"):
        return "status PUT"
    return "other device"


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fleets = sorted(results["fleets"], key=lambda f: f["devices"])
    sizes = [f["devices"] for f in fleets]
    labels = [f"{s:,}" for s in sizes]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    ax = axes[0][0]
    ax.plot(
        sizes, [f["rollout"]["cycles_to_all_active"] for f in fleets], "o-", color="#2a7", label="all active"
    )
    ax.plot(
        sizes,
        [f["rollout"]["controller_concluded_cycle"] for f in fleets],
        "s--",
        color="#777",
        label="controller concluded",
    )
    ax.set(
        xscale="log",
        xlabel="devices",
        ylabel="poll cycles from first publish",
        title="rollout time to the whole fleet (simulated)",
    )
    for s, f in zip(sizes, fleets, strict=True):
        ax.annotate(
            f"wall {f['rollout']['wall_seconds_to_all_active']} s",
            (s, f["rollout"]["cycles_to_all_active"]),
            textcoords="offset points",
            xytext=(4, -12),
            fontsize=7,
        )
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)

    ax = axes[0][1]
    ax.plot(
        sizes,
        [f["requests"]["per_cycle_median"] for f in fleets],
        "o-",
        color="#2a7",
        label="rollout, median cycle",
    )
    ax.plot(
        sizes,
        [f["requests"]["per_cycle_max"] for f in fleets],
        "^:",
        color="#c52",
        label="rollout, busiest cycle",
    )
    ax.plot(
        sizes,
        [(f["requests"]["idle_per_device_per_cycle"] or 0) * f["devices"] for f in fleets],
        "s--",
        color="#777",
        label="idle cycle",
    )
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="devices",
        ylabel="S3 requests per poll cycle",
        title="channel requests per cycle (all sides)",
    )
    ax.legend(fontsize=8)

    ax = axes[1][0]
    groups: dict[str, list[float]] = {}
    for f in fleets:
        for kind in f["requests"]["per_cycle_by_kind_mean"]:
            groups.setdefault(_kind_group(kind), [0.0] * len(fleets))
    for i, f in enumerate(fleets):
        for kind, value in f["requests"]["per_cycle_by_kind_mean"].items():
            groups[_kind_group(kind)][i] += value / f["devices"]
    bottom = [0.0] * len(fleets)
    for name, values in sorted(groups.items()):
        ax.bar(labels, values, bottom=bottom, label=name)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set(
        xlabel="devices",
        ylabel="requests per device per cycle (mean over rollout)",
        title="per device, by kind, during the rollout",
    )
    ax.legend(fontsize=7)

    ax = axes[1][1]
    ax.plot(
        sizes, [f["controller"]["advance_seconds_median"] for f in fleets], "o-", color="#2a7", label="median"
    )
    ax.plot(sizes, [f["controller"]["advance_seconds_max"] for f in fleets], "^:", color="#c52", label="max")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="devices",
        ylabel="seconds per advance (wall)",
        title="controller: one advance step",
    )
    twin = ax.twinx()
    twin.plot(
        sizes,
        [f["controller"]["status_gets_per_advance_max"] for f in fleets],
        "s--",
        color="#777",
        label="status GETs, busiest step",
    )
    twin.set(yscale="log", ylabel="status GETs per advance (busiest)")
    ax.legend(loc="upper left", fontsize=8)
    twin.legend(loc="lower right", fontsize=8)
    note = "every install real"
    fig.suptitle(
        f"slimline fleet rollout on moto S3 ({results['machine']['cpu']}, "
        f"{results['machine']['cores']} cores) — {note}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[100, 1000],
        help="fleet sizes to simulate (10000: about an hour)",
    )
    parser.add_argument(
        "--poll-seconds", type=float, default=30.0, help="agents' mean poll interval (simulated)"
    )
    parser.add_argument("--probe-installs", type=int, default=5, help="real installs timed before the fleets")
    parser.add_argument(
        "--idle-cycles", type=int, default=1, help="cycles simulated after the rollout settled"
    )
    parser.add_argument(
        "--max-cycles", type=int, default=60, help="give up on a rollout after this many cycles"
    )
    parser.add_argument(
        "--device-root",
        type=Path,
        default=Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir()),
        help="where device folders go (default /dev/shm: the agents' fsyncs are a device's own cost, "
        "not the channel's, and this machine's disk is shared)",
    )
    parser.add_argument("--seed", type=int, default=12, help="seed of the devices' poll jitter")
    parser.add_argument(
        "--output", type=Path, default=JSON_OUT, help="results JSON (the chart goes beside it)"
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the fleets of other sizes already in the JSON (each has its own measured_at)",
    )
    parser.add_argument("--chart", action="store_true", help="only redraw the chart from the JSON")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    if args.chart:
        results = json.loads(args.output.read_text())
    else:
        results = run(args)
        if args.keep and args.output.is_file():
            kept = [
                f for f in json.loads(args.output.read_text())["fleets"] if f["devices"] not in args.sizes
            ]
            results["fleets"] = sorted(kept + results["fleets"], key=lambda f: f["devices"])
            results["notes"] = notes(results, args.poll_seconds)
        args.output.write_text(json.dumps(results, indent=2) + "\n")
    chart(results, args.output.with_suffix(".png"))
    for fleet in results["fleets"]:
        print(one_line(fleet))
    for line in results["notes"]["text"]:
        print("-", line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
