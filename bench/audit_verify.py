"""Audit log verification benchmark: `slimline audit verify` (tasks.flow.audit.verify_audit: the
walk of the chain and the signed heads, the head its witness remembers, and the cross-check of
every device's engine against the released ones) over logs of 1,000, 10,000 and 100,000 records on
a file:// store, so the growth shows.

Each log is built fast, outside the append path: the record objects are written directly with the
real Record model and real hashes (each record's prev is the sha256 of the one before), a head
signed with a real EC P-256 key every 100 records, as appends would; every 1,000th record is a
bundle.signed of one fleet, whose DEVICES devices report in a file:// channel that they run the
latest release's engine. Then the real command's code verifies it, several times; the figure is
the median.

    python bench/audit_verify.py                       # run: bench/results/audit-verify.json + .png
    python bench/audit_verify.py --sizes 1000 10000    # fewer sizes
    python bench/audit_verify.py --chart               # redraw the chart from the JSON only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import JsonValue

RESULTS = Path(__file__).resolve().parent / "results"
HEAD_EVERY = 100
BUNDLE_EVERY = 1000
FLEET = "bench"
DEVICES = 1000


def engine_of(release: int) -> str:
    return f"{release:064x}"


def build_log(root: Path, records: int, private_key: Any) -> float:
    """Write `records` records and a signed head every HEAD_EVERY into `root`; seconds taken."""
    from tasks.audit.chain import head_key
    from tasks.audit.heads import Head
    from tasks.audit.records import GENESIS, RECORD_KINDS, Record, digest, encode, record_key
    from tasks.release.metadata import sign_document

    began = time.perf_counter()
    (root / "records").mkdir(parents=True)
    (root / "heads").mkdir()
    prev, start = GENESIS, datetime(2026, 5, 1, tzinfo=UTC)
    for seq in range(1, records + 1):
        at = start + timedelta(seconds=seq)
        kind = RECORD_KINDS[seq % len(RECORD_KINDS)]
        data: dict[str, JsonValue] = {"release": seq // 1000, "verdict": "active"}
        if seq % BUNDLE_EVERY == 0:
            release = seq // BUNDLE_EVERY
            kind, data = (
                "bundle.signed",
                {"fleet": FLEET, "release": release, "engines": {"cpu": engine_of(release)}},
            )
        record = Record(
            seq=seq,
            at=at,
            kind=kind,  # type: ignore[arg-type]  # one of the Literal's values
            subject=f"device:d{seq % 1000}",
            data=data,
            actor="fleet_release",
            prev=prev,
        )
        body = encode(record)
        (root / record_key(seq)).write_bytes(body)
        prev = digest(body)
        if seq % HEAD_EVERY == 0:
            head = Head(seq=seq, hash=prev, count=seq, at=at)
            (root / head_key(seq)).write_bytes(sign_document(head.model_dump(mode="json"), private_key))
    return time.perf_counter() - began


def enroll_devices(settings: Any, release: int) -> None:
    """DEVICES devices of FLEET, each reporting that it runs `release`'s engine."""
    from tasks.engines.capabilities import Capabilities
    from tasks.fleet.channel import ActiveRelease, DeviceStatus, Enrollment, open_channel

    channel = open_channel(settings, FLEET)
    now = datetime.now(UTC)
    for index in range(DEVICES):
        device = f"d{index:05d}"
        caps = Capabilities(
            machine="x86_64", cpu_model="bench", cpu_flags=[], cpu_count=2, runtimes={}, gpus=[]
        )
        channel.put_enrollment(
            Enrollment(device=device, fleet=FLEET, capabilities=caps, agent_version="bench", enrolled_at=now)
        )
        active = ActiveRelease(
            release=release,
            target="cpu",
            model_version="m/1",
            engine_digest=engine_of(release),
            activated_at=now,
        )
        channel.put_status(DeviceStatus(device=device, fleet=FLEET, seq=1, reported_at=now, active=active))


def run(args: argparse.Namespace) -> dict[str, Any]:
    from cryptography.hazmat.primitives.asymmetric import ec

    from tasks.core.settings import Settings
    from tasks.flow.audit import verify_audit

    key = ec.generate_private_key(ec.SECP256R1())
    logs = []
    for size in args.sizes:
        with tempfile.TemporaryDirectory(prefix="audit-bench-", dir=args.tmp) as tmp:
            root = Path(tmp) / "audit"
            built = build_log(root, size, key)
            settings = Settings(home=Path(tmp), audit_log=root.as_uri(), audit_head_every=HEAD_EVERY)
            enroll_devices(settings, size // BUNDLE_EVERY)
            seconds, walks = [], []
            for _ in range(args.runs):
                began = time.perf_counter()
                report, devices = verify_audit(settings, key.public_key())
                seconds.append(time.perf_counter() - began)
                walks.append(report.seconds)
                assert report.records == size and report.unsigned_tail == 0 and devices == DEVICES
            # Every run after the first also checked the head the first one remembered.
            assert args.runs == 1 or report.witness == f"signed head {size} seen before still holds"
            bytes_on_disk = sum(p.stat().st_size for p in root.rglob("*.json"))
        median = statistics.median(seconds)
        logs.append(
            {
                "records": size,
                "heads": size // HEAD_EVERY,
                "bytes": bytes_on_disk,
                "build_seconds": round(built, 2),
                "verify_seconds": [round(s, 3) for s in seconds],
                "verify_seconds_median": round(median, 3),
                "walk_seconds_median": round(statistics.median(walks), 3),
                "records_per_second": round(size / median),
            }
        )
        print(
            f"{size:>8,} records  built in {built:6.1f} s  verify median {median:7.3f} s "
            f"({size / median:,.0f} records/s)  runs {', '.join(f'{s:.2f}' for s in seconds)}",
            flush=True,
        )
    return {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "store": "file:// (local disk, page cache warm after the build)",
        "method": f"{args.runs} runs of verify_audit (slimline audit verify) per size, 4 reader threads; "
        f"a signed head every {HEAD_EVERY} records, all checked; {DEVICES} devices cross-checked; "
        "walk = the chain and heads alone",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "logs": logs,
    }


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logs = sorted(results["logs"], key=lambda r: r["records"])
    sizes = [r["records"] for r in logs]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    axes[0].plot(sizes, [r["verify_seconds_median"] for r in logs], "o-", color="#2a7")
    for r in logs:
        axes[0].annotate(
            f"{r['verify_seconds_median']:.2f} s",
            (r["records"], r["verify_seconds_median"]),
            textcoords="offset points",
            xytext=(4, -12),
            fontsize=8,
        )
    axes[0].set(xscale="log", yscale="log", xlabel="records", ylabel="seconds (median)", title="audit verify")
    axes[1].bar([f"{s:,}" for s in sizes], [r["records_per_second"] for r in logs], color="#2a7")
    axes[1].set(xlabel="records", ylabel="records per second", title="verify throughput")
    fig.suptitle(f"{results['store']}; {results['method']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000], help="log sizes")
    parser.add_argument("--runs", type=int, default=3, help="verify runs per size (the median is quoted)")
    parser.add_argument("--tmp", type=Path, help="folder for the logs (default the system's temp folder)")
    parser.add_argument("--chart", action="store_true", help="only redraw the chart from the JSON")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "audit-verify.json"
    if args.chart:
        results = json.loads(out.read_text())
    else:
        results = run(args)
        out.write_text(json.dumps(results, indent=2) + "\n")
    chart(results, RESULTS / "audit-verify.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
