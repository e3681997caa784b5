"""The `slimline` command."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from pydantic import BaseModel

from tasks.core.errors import SlimlineError
from tasks.core.settings import Settings

if TYPE_CHECKING:
    from tasks.recipe import Recipe

JobModel = TypeVar("JobModel", bound=BaseModel)


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {"home": args.home} if args.home else {}
    return Settings(**overrides)


def cmd_demo(args: argparse.Namespace) -> int:
    from tasks.demo.runner import run_demo
    from tasks.demo.teacher import TeacherConfig
    from tasks.report.console import console

    teacher = TeacherConfig(train_examples=args.teacher_examples, epochs=args.teacher_epochs)
    settings = _settings(args)
    result = run_demo(settings, args.recipe or settings.recipe, teacher, console())
    if args.json:
        args.json.write_text(result.model_dump_json(indent=2))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from tasks.flow.engines import build_published_engines
    from tasks.flow.local import run_local
    from tasks.report.console import console, engine_table, print_summary

    settings = _settings(args)
    summary = run_local(settings, args.recipe, args.checkpoint)
    print_summary(summary)
    console().print(engine_table(build_published_engines(settings, summary)))
    return 0


def _read_job(model: type[JobModel], job: str) -> JobModel:
    """A step's job: inline JSON (how the DAG's containers and pods get it), a file, or - for stdin."""
    import sys

    from pydantic import ValidationError

    from tasks.core.config import format_errors
    from tasks.core.errors import ConfigError

    if job.lstrip().startswith("{"):
        text, where = job, "inline"
    elif job == "-":
        text, where = sys.stdin.read(), "stdin"
    else:
        try:
            text, where = Path(job).read_text(encoding="utf-8"), job
        except OSError as exc:
            raise ConfigError(f"job file {job}: {exc.strerror}") from None
    try:
        return model.model_validate_json(text)
    except ValidationError as exc:
        raise ConfigError(f"{model.__name__} ({where}): {format_errors(exc)}") from None


def _step_result(args: argparse.Namespace, result: BaseModel) -> int:
    """The result as one JSON line, the last of stdout (what a container task returns), and in
    --output (where a pod's result is collected) written whole or not at all."""
    text = result.model_dump_json()
    if args.output:
        from tasks.core.files import write_atomic

        write_atomic(args.output, text)
    print(text)
    return 0


def cmd_step_variant(args: argparse.Namespace) -> int:
    from tasks.flow.pipeline import VariantJob, run_variant_job

    return _step_result(args, run_variant_job(_settings(args), _read_job(VariantJob, args.job)))


def cmd_step_engine(args: argparse.Namespace) -> int:
    from tasks.flow.engines import EngineJob, run_engine_job

    return _step_result(args, run_engine_job(_settings(args), _read_job(EngineJob, args.job)))


def cmd_nightly(args: argparse.Namespace) -> int:
    from tasks.flow.orchestration import dags_test

    settings = _settings(args)
    conf = {
        "recipe": str((args.recipe or settings.recipe).resolve()),
        "checkpoints": args.checkpoint or [],
        "prefix": args.prefix,
    }
    result = dags_test(settings, "nightly_compression", conf)
    print(f"DAG run {result.run_id}: {result.state} in {result.seconds:.0f}s; log {result.log_path}")
    return 0


def cmd_checkpoints_list(args: argparse.Namespace) -> int:
    from tasks.core.errors import CheckpointRefused
    from tasks.intake.checkpoints import fetch, known_digest, list_checkpoints
    from tasks.intake.refusals import refusal_of

    settings = _settings(args)
    recipe = None
    if args.recipe:
        from tasks.recipe import load_recipe

        recipe = load_recipe(args.recipe)
    rows = []
    for info in list_checkpoints(settings, args.prefix):
        row = info.model_dump()
        digest = known_digest(settings, info.uri, info.fingerprint)
        recipe_digest = recipe.digest if recipe else None
        refusal = refusal_of(settings, info.uri, info.fingerprint, recipe_digest)
        if args.digests and refusal is None:
            try:
                digest = fetch(settings, info.uri).digest
            except CheckpointRefused:
                refusal = refusal_of(settings, info.uri, info.fingerprint, recipe_digest)
        if refusal is not None:
            row |= {"state": "refused", "reason": refusal.reason}
        elif recipe is not None and digest is not None and _processed(settings, recipe, digest):
            row["state"] = "processed"
        else:
            row["state"] = "new"
        if digest is not None and args.digests:
            row["digest"] = digest
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print(f"no checkpoints under {settings.store_uri}/{args.prefix}".rstrip("/"))
    for row in [] if args.json else rows:
        digest = f"  sha256:{row['digest'][:16]}" if "digest" in row else ""
        reason = row["reason"].removeprefix(f"checkpoint {row['uri']}: ") if "reason" in row else ""
        state = f"{row['state']}: {reason}" if reason else row["state"]
        print(f"{row['uri']}  {row['files']} files  {row['size_bytes'] / 1e6:.1f} MB{digest}  {state}")
    return 0


def _processed(settings: Settings, recipe: Recipe, digest: str) -> bool:
    from tasks.registry import tracking

    return tracking.processed(settings, recipe, digest)


def cmd_checkpoints_verify(args: argparse.Namespace) -> int:
    from tasks.intake.checkpoints import fetch

    checkpoint = fetch(_settings(args), args.uri)
    print(f"ok {checkpoint.uri} sha256:{checkpoint.digest} ({checkpoint.model_type}) -> {checkpoint.path}")
    return 0


def cmd_recipe_check(args: argparse.Namespace) -> int:
    from tasks.recipe import load_recipe

    recipe = load_recipe(args.recipe)
    search = ""
    if recipe.search is not None:
        search = f", a search of up to {recipe.search.trials} of {recipe.search.space.size} points"
    print(
        f"ok {args.recipe}: recipe {recipe.name}, {len(recipe.variants)} variants{search}, "
        f"digest {recipe.digest[:12]}"
    )
    return 0


def cmd_techniques(args: argparse.Namespace) -> int:
    from tasks.compress.techniques import TECHNIQUES

    for name, spec in sorted(TECHNIQUES.items()):
        print(f"{name}  ({'/'.join(spec.accepts)} -> {spec.produces})  {spec.summary}")
        for field, info in spec.config.model_fields.items():
            print(f"    {field} = {info.default!r}  {info.description or ''}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from tasks.registry.engines import logged_outcomes
    from tasks.report.console import print_summary
    from tasks.report.html import load_logged_validation, load_published_summary, write_report

    settings = _settings(args)
    summary = load_published_summary(settings, args.run_id)
    validation = load_logged_validation(settings, args.run_id)
    engines = logged_outcomes(settings, args.run_id)
    path = write_report(settings, summary, validation, out=args.out, engines=engines)
    print_summary(summary)
    print(f"report: {path}")
    return 0


def cmd_gate_check(args: argparse.Namespace) -> int:
    from tasks.core.errors import GateFailed
    from tasks.flow.pipeline import recheck_version
    from tasks.report.console import console, gate_table, timing_table

    result = recheck_version(_settings(args), args.model_version)
    out = console()
    out.print(gate_table(result))
    out.print(timing_table(result.timing))
    if args.json:
        args.json.write_text(result.model_dump_json(indent=2))
    if not result.verdict.passed:
        raise GateFailed(f"{result.version.label} fails its gates: {result.verdict.summary}")
    out.print(f"{result.version.label} passes its gates")
    return 0


def cmd_engine_build(args: argparse.Namespace) -> int:
    from tasks.flow.engines import build_engines
    from tasks.recipe import load_recipe
    from tasks.report.console import console, engine_table

    recipe = load_recipe(args.recipe) if args.recipe else None
    outcomes = build_engines(_settings(args), args.model_version, args.target, recipe=recipe)
    console().print(engine_table(outcomes))
    if args.json:
        args.json.write_text(json.dumps([o.model_dump(mode="json") for o in outcomes], indent=2))
    return 0


def cmd_engine_list(args: argparse.Namespace) -> int:
    from tasks.registry.engines import engines_of
    from tasks.registry.versions import get_version, parse_version

    settings = _settings(args)
    ref = get_version(settings, *parse_version(args.model_version))
    engines = engines_of(settings, ref)
    if args.json:
        print(json.dumps({t: e.model_dump() for t, e in engines.items()}, indent=2))
        return 0
    if not engines:
        print(f"{ref.label}: no engines registered")
    for target, engine in sorted(engines.items()):
        print(
            f"{ref.label}  {target:<20} {engine.runtime:<16} {engine.precision:<5} "
            f"{engine.digest[:16]}  run {engine.run_id}"
        )
    return 0


def cmd_targets(args: argparse.Namespace) -> int:
    from tasks.engines.capabilities import read_capabilities, unmet
    from tasks.engines.target import load_target, load_targets

    settings = _settings(args)
    targets = (
        [load_target(p) for p in args.files]
        if args.files
        else list(load_targets(settings.targets_dir).values())
    )
    caps = read_capabilities()
    for target in targets:
        missing = unmet(target.requires, target.runtime, caps)
        here = "this machine qualifies" if not missing else "not this machine: " + "; ".join(missing)
        print(f"{target.name:<20} {target.runtime:<16} {target.precision:<5} {here}")
    return 0


def cmd_keys_generate(args: argparse.Namespace) -> int:
    from tasks.release.keys import generate_key_pair

    pair = generate_key_pair(_settings(args).signing_key, force=args.force)
    # Where the keys are, never what the private one holds.
    print(f"private key: {pair.private} (mode 0600; signs bundles, stays on this machine)")
    print(f"public key:  {pair.public} (give it to devices as --trusted-key)")
    print(f"key id:      {pair.key_id}")
    return 0


def cmd_release_bundle(args: argparse.Namespace) -> int:
    from tasks.flow.release import bundle_release
    from tasks.release.bundle import RELEASE_JSON, Release, signature_path

    bundle = bundle_release(_settings(args), args.model_version, args.fleet)
    release = Release.model_validate_json((bundle / RELEASE_JSON).read_text(encoding="utf-8"))
    print(f"bundle:    {bundle}")
    print(f"signature: {signature_path(bundle)}")
    print(f"release:   {release.release_id} (fleet {release.fleet}, number {release.number})")
    print(f"targets:   {', '.join(sorted(release.targets))}")
    print(f"expires:   {release.expires_at.isoformat()}")
    return 0


def cmd_release_verify(args: argparse.Namespace) -> int:
    from tasks.release.verify import verify_bundle

    release = verify_bundle(
        args.bundle,
        args.trusted_key,
        signature=args.signature,
        current_release=args.current_release,
        fleet=args.fleet,
    )
    print(f"ok {args.bundle}")
    print(f"release:  {release.release_id}")
    print(f"fleet:    {release.fleet}")
    print(f"number:   {release.number}")
    print(f"model:    {release.model_version}")
    print(f"targets:  {', '.join(sorted(release.targets))}")
    print(f"expires:  {release.expires_at.isoformat()}")
    return 0


def cmd_fleet_release(args: argparse.Namespace) -> int:
    from contextlib import AbstractContextManager, nullcontext

    from tasks.fleet.spec import get_fleet
    from tasks.flow.orchestration import api_server, dags_test

    settings = _settings(args)
    fleet = get_fleet(settings.fleets_dir, args.fleet)
    conf = {"fleet": fleet.name, "model_version": args.model_version}
    server: AbstractContextManager[str | None] = (
        api_server(settings) if fleet.approval.required else nullcontext(None)
    )
    with server as url:
        if url:
            print(f"approval: in Airflow at {url} (Required Actions), or: slimline release approve --fleet F")
        result = dags_test(settings, "fleet_release", conf)
    print(f"run {result.run_id}: {result.state} in {result.seconds:.0f} s")
    return 0


def cmd_release_approve(args: argparse.Namespace) -> int:
    import getpass

    from tasks.flow.approval import AirflowApi, answer_approval

    settings = _settings(args)
    password = os.environ.get("SLIMLINE_AIRFLOW_PASSWORD")
    if args.user and password is None:
        password = getpass.getpass(f"Airflow password for {args.user}: ")
    api = AirflowApi(args.api_url or settings.airflow_api_url, args.user, password)
    answered = answer_approval(api, args.fleet, args.release, approve=not args.reject, comment=args.comment)
    verb = "rejected" if args.reject else "approved"
    print(f"release {answered.release} of {answered.model_version} to fleet {answered.fleet}: {verb}")
    print(f"run:     {answered.dag_run_id}")
    return 0


def cmd_fleet_status(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from tasks.fleet.channel import open_channel
    from tasks.fleet.spec import get_fleet
    from tasks.fleet.status import fleet_status
    from tasks.release.keys import load_public_key, public_key_path
    from tasks.report.fleet import print_fleet_status
    from tasks.report.fleet_html import fleet_report_path, write_fleet_report

    settings = _settings(args)
    fleet = get_fleet(settings.fleets_dir, args.fleet)
    trusted = load_public_key(public_key_path(settings.signing_key))
    status = fleet_status(open_channel(settings, fleet.name), trusted, datetime.now(UTC))
    if args.json:
        print(status.model_dump_json(indent=2))
    else:
        print_fleet_status(status)
    if args.html is not None:
        path = write_fleet_report(
            status, Path(args.html) if args.html else fleet_report_path(settings.home, fleet.name)
        )
        # With --json, stdout carries the JSON alone.
        print(f"page: {path}", file=sys.stderr if args.json else sys.stdout)
    return 0


def cmd_fleet_rollback(args: argparse.Namespace) -> int:
    from tasks.flow.fleet_release import roll_back_fleet

    record = roll_back_fleet(_settings(args), args.fleet, args.reason)
    print(f"fleet {record.fleet}: {record.reason}")
    return 0


def cmd_agent(args: argparse.Namespace) -> int:
    from tasks.fleet.agent import agent_config, run_agent
    from tasks.release.keys import public_key_path

    settings = _settings(args)
    config = agent_config(
        fleet=args.fleet,
        device_id=args.device_id,
        root=args.root,
        channel_uri=args.channel or settings.channel_uri,
        s3_endpoint_url=settings.s3_endpoint_url,
        trusted_key=args.trusted_key or public_key_path(settings.signing_key),
        labels=dict(args.label or []),
        poll_seconds=args.poll_seconds,
        jitter=args.jitter,
        cpuinfo=args.cpuinfo,
    )
    return run_agent(config, host=args.host, port=args.port, once=args.once)


def cmd_audit_verify(args: argparse.Namespace) -> int:
    import json

    from tasks.flow.audit import verify_audit
    from tasks.release.keys import load_public_key, public_key_path

    settings = _settings(args)
    trusted = load_public_key(args.trusted_key or public_key_path(settings.signing_key))
    report, devices = verify_audit(settings, trusted, args.witness)
    if args.json:
        print(json.dumps(report.model_dump(mode="json") | {"devices_checked": devices}, indent=2))
    else:
        print(f"{report.summary()}; {devices} devices run only engines released to their fleet")
    return 0


def cmd_audit_fleet(args: argparse.Namespace) -> int:
    from tasks.flow.audit import audit_fleet

    trace = audit_fleet(_settings(args), args.fleet)
    print(trace.model_dump_json(indent=2) if args.json else trace.text())
    return 0


def cmd_audit_device(args: argparse.Namespace) -> int:
    from tasks.flow.audit import audit_device

    trace = audit_device(_settings(args), args.device, args.fleet)
    print(trace.model_dump_json(indent=2) if args.json else trace.text())
    return 0


def cmd_audit_version(args: argparse.Namespace) -> int:
    from tasks.flow.audit import audit_version

    trace = audit_version(_settings(args), args.model_version)
    print(trace.model_dump_json(indent=2) if args.json else trace.text())
    return 0


def cmd_audit_sign_head(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from tasks.audit.heads import sign_head
    from tasks.audit.log import open_log
    from tasks.release.keys import load_private_key

    settings = _settings(args)
    audit = open_log(settings)
    head = sign_head(audit, load_private_key(settings.signing_key), datetime.now(UTC))
    if head is None:
        print(f"audit log {audit.uri} is empty; nothing to sign")
    else:
        print(f"signed head {head.seq} of {audit.uri}: record {head.seq} hashes to {head.hash}")
    return 0


def _model_version(text: str) -> str:
    name, _, version = text.rpartition("/")
    if not name or not version.isdigit():
        raise argparse.ArgumentTypeError(
            f"{text!r} is not NAME/VERSION with a version number, e.g. minilm-sentiment/7"
        )
    return text


def _release_number(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a release number (0, 1, 2, ...)")
    return int(text)


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key or not value:
        raise argparse.ArgumentTypeError(f"{text!r} is not a label; expected KEY=VALUE, e.g. site=berlin")
    return key, value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slimline",
        description="Nightly compression and release pipeline for Transformer models.",
    )
    parser.add_argument("--home", type=Path, help="slimline home (default $SLIMLINE_HOME or ./.slimline)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    recipe_help = "recipe YAML (default $SLIMLINE_RECIPE or recipes/minilm-sentiment.yaml)"
    version_help = (
        "registered model and version or alias, e.g. minilm-sentiment/3 or minilm-sentiment/candidate"
    )
    demo = sub.add_parser(
        "demo",
        help="fine-tune the demo teacher and run the nightly DAG on it through Airflow",
        description="Fine-tune MiniLM on the tweet corpus (cached), publish it to the checkpoint "
        "store, run the nightly_compression DAG with `airflow dags test`, print the variant table.",
    )
    demo.add_argument("--recipe", type=Path, help=recipe_help)
    demo.add_argument("--teacher-examples", type=int, default=6000, help="training tweets (default 6000)")
    demo.add_argument("--teacher-epochs", type=int, default=2, help="fine-tuning epochs (default 2)")
    demo.add_argument("--json", type=Path, help="also write the result as JSON to this file")
    demo.set_defaults(func=cmd_demo)

    run = sub.add_parser(
        "run",
        help="run every step for one checkpoint in this process (no Airflow)",
        description="The DAG's work for one checkpoint, in-process, for debugging: variants, gates, "
        "registration, then the registered versions' engines for the recipe's targets.",
    )
    run.add_argument("--checkpoint", required=True, help="checkpoint URI (file://... or s3://...)")
    run.add_argument("--recipe", type=Path, required=True, help="recipe YAML")
    run.set_defaults(func=cmd_run)

    step = sub.add_parser(
        "step",
        help="one step of the nightly DAG, as its container or pod runs it",
        description="The work of one DAG task, the same as in-process: read its job as JSON, print its "
        "result as one JSON line (the last line of stdout; logs go to stderr). Artifacts and results "
        "travel through the object store and the artifact keys, so a step run anywhere gives the same.",
    )
    step_sub = step.add_subparsers(dest="step", required=True, metavar="STEP")
    job_help = "the job: its JSON inline, a JSON file, or - for stdin"
    output_help = "also write the result to this file (whole or not at all)"
    step_variant = step_sub.add_parser(
        "variant",
        help="compress, evaluate and gate one variant of a prepared checkpoint, log its child run",
        description='JOB is {"prepared": <the prepare task\'s result>, "variant": NAME}; prints '
        '{"prepared": ..., "outcome": ...}.',
    )
    step_variant.add_argument("job", metavar="JOB", help=job_help)
    step_variant.add_argument("--output", type=Path, metavar="FILE", help=output_help)
    step_variant.set_defaults(func=cmd_step_variant)
    step_engine = step_sub.add_parser(
        "engine",
        help="build, check and record one registered version's engine for one target",
        description='JOB is {"model_version": NAME/VERSION, "target": NAME, "parent_run_id": ID, '
        '"recipe_digest": SHA256}; prints {"parent_run_id": ..., "outcome": ...}: built, skipped (the '
        "target cannot build this version) or failed (its canary check).",
    )
    step_engine.add_argument("job", metavar="JOB", help=job_help)
    step_engine.add_argument("--output", type=Path, metavar="FILE", help=output_help)
    step_engine.set_defaults(func=cmd_step_engine)

    nightly = sub.add_parser(
        "nightly",
        help="one real run of the nightly_compression DAG (airflow dags test)",
        description="Discover new checkpoints (or take --checkpoint) and run the DAG once.",
    )
    nightly.add_argument("--recipe", type=Path, help=recipe_help)
    nightly.add_argument("--checkpoint", action="append", help="checkpoint URI; repeatable")
    nightly.add_argument("--prefix", default="", help="store prefix to discover under")
    nightly.set_defaults(func=cmd_nightly)

    checkpoints = sub.add_parser("checkpoints", help="list and verify checkpoints in the store")
    csub = checkpoints.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = csub.add_parser("list", help="list checkpoints under a prefix of the store")
    listing.add_argument("--prefix", default="", help="prefix inside the store")
    listing.add_argument("--digests", action="store_true", help="fetch and verify each to show its digest")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.add_argument(
        "--recipe",
        type=Path,
        help="recipe whose runs mark a checkpoint processed and whose refusals count (without it: new, "
        "or refused by every recipe)",
    )
    listing.set_defaults(func=cmd_checkpoints_list)
    verify = csub.add_parser("verify", help="fetch one checkpoint, verify it, print its digest")
    verify.add_argument("uri", help="checkpoint URI")
    verify.set_defaults(func=cmd_checkpoints_verify)

    recipe = sub.add_parser("recipe", help="validate recipes")
    rsub = recipe.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = rsub.add_parser("check", help="validate a recipe and print its digest")
    check.add_argument("recipe", type=Path, help="recipe YAML")
    check.set_defaults(func=cmd_recipe_check)

    gate = sub.add_parser("gate", help="judge registered model versions against their gates")
    gsub = gate.add_subparsers(dest="action", required=True, metavar="ACTION")
    gate_check = gsub.add_parser(
        "check",
        help="re-judge a registered version, timed beside the baseline (exit 0 pass, 10 fail)",
        description="Judge NAME/VERSION again from its lineage: the recipe logged on its parent run, "
        "its checkpoint from the store (digest checked), today's data split, the baseline and the "
        "version evaluated on it and timed side by side with the baseline (cached evaluations and "
        "timings are reused when models, data and code are unchanged), every gate of the recipe, "
        "latency budgets on the side-by-side p95, and no regression against `production`. "
        "Exit status 0 when every gate passes, 10 when one fails, other non-zero codes for errors.",
    )
    gate_check.add_argument("--model-version", required=True, metavar="NAME/VERSION", help=version_help)
    gate_check.add_argument("--json", type=Path, help="also write the verdict and metrics as JSON here")
    gate_check.set_defaults(func=cmd_gate_check)

    engine = sub.add_parser("engine", help="build engines of registered versions for target hardware")
    esub = engine.add_subparsers(dest="action", required=True, metavar="ACTION")
    engine_build = esub.add_parser(
        "build",
        help="build, check and register a version's engines (exit 13 cannot build, 14 check failed)",
        description="Build NAME/VERSION's engine for each --target (default: the targets of the recipe "
        "it was produced with) through the artifact cache, check it on the canary set (the first "
        "examples of the evaluation split: label agreement and largest logit difference against the "
        "registered model; batch-1 latency and throughput when this machine is the target's kind), and "
        "record it in MLflow against the version. A build whose check fails is not recorded.",
    )
    engine_build.add_argument("--model-version", required=True, metavar="NAME/VERSION", help=version_help)
    engine_build.add_argument(
        "--target", action="append", metavar="TARGET", help="target name (targets/TARGET.yaml); repeatable"
    )
    engine_build.add_argument(
        "--recipe",
        type=Path,
        help="recipe whose evaluation split gives the canary set and whose targets are the default "
        "(default: the recipe the version was produced with, as logged on its parent run)",
    )
    engine_build.add_argument("--json", type=Path, help="also write the outcomes as JSON here")
    engine_build.set_defaults(func=cmd_engine_build)
    engine_list = esub.add_parser("list", help="the engines registered for a version, by target")
    engine_list.add_argument("--model-version", required=True, metavar="NAME/VERSION", help=version_help)
    engine_list.add_argument("--json", action="store_true", help="print JSON")
    engine_list.set_defaults(func=cmd_engine_list)

    targets = sub.add_parser(
        "targets",
        help="validate target files and say whether this machine qualifies for each",
        description="Load every target in $SLIMLINE_TARGETS_DIR (or the FILEs given), fail on the first "
        "invalid one, and print whether this machine meets each target's requirements.",
    )
    targets.add_argument("files", nargs="*", type=Path, metavar="FILE", help="target YAML files")
    targets.set_defaults(func=cmd_targets)

    techniques = sub.add_parser("techniques", help="list the registered techniques and their configs")
    techniques.set_defaults(func=cmd_techniques)

    report = sub.add_parser(
        "report",
        help="regenerate the HTML release report of a published parent run",
        description="Rebuild the release report of one checkpoint's run from what MLflow stored "
        "(the parent run's summary.json, and validation.json when logged): one self-contained HTML "
        "file with the variant table, the accuracy/latency chart, data validation and lineage. "
        "Writes it (default <home>/reports/RUN_ID.html), logs it to the run as report.html, prints "
        "the variant table and the path.",
    )
    report.add_argument("run_id", metavar="RUN_ID", help="MLflow id of the parent run (one per checkpoint)")
    report.add_argument(
        "--out", type=Path, metavar="PATH", help="write the HTML here instead of <home>/reports/RUN_ID.html"
    )
    report.set_defaults(func=cmd_report)

    keys = sub.add_parser("keys", help="the key pair that signs release bundles")
    ksub = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    generate = ksub.add_parser(
        "generate",
        help="make the release signing key pair (EC P-256) where settings say",
        description="Write a new EC P-256 key pair: the private key at $SLIMLINE_SIGNING_KEY "
        "(default <home>/keys/release.key; PKCS8 PEM, mode 0600, folder 0700) and the public key "
        "beside it with `.pub` added. Prints both paths and the key id (sha256 of the public key PEM, "
        "as model-signing records it in each signature); never the private key. Refuses to replace "
        "an existing key unless --force.",
    )
    generate.add_argument(
        "--force",
        action="store_true",
        help="replace an existing key pair (bundles signed with the old key no longer verify with the new)",
    )
    generate.set_defaults(func=cmd_keys_generate)

    release = sub.add_parser("release", help="signed release bundles for fleets")
    relsub = release.add_subparsers(dest="action", required=True, metavar="ACTION")
    release_bundle = relsub.add_parser(
        "bundle",
        help="sign a release of a version for a fleet: one engine per fleet target",
        description="Collect NAME/VERSION's registered engines for every target of fleet F (digests "
        "checked against the registry), the canary set with the metrics each device must reproduce, "
        "the version's lineage, a release id, the fleet's next release number and an expiry, into "
        "<home>/releases/F/<number>/bundle, signed with the release key (model-signing, private-key "
        "mode) into bundle.sig beside it. Prints the bundle's path.",
    )
    release_bundle.add_argument("--model-version", required=True, metavar="NAME/VERSION", help=version_help)
    release_bundle.add_argument("--fleet", required=True, metavar="F", help="fleet name (fleets/F.yaml)")
    release_bundle.set_defaults(func=cmd_release_bundle)
    release_verify = relsub.add_parser(
        "verify",
        help="verify a signed release bundle as a device would (exit 0 ok, 15 refused)",
        description="Check BUNDLE against the trusted public key: the model-signing signature over "
        "every file (an edited, swapped, added or missing file, or another signer, is refused), "
        "release.json and each file's sha256, the expiry, and that the release number is above the "
        "device's current one (an older release replayed is refused). Prints the release id, fleet, "
        "number, model version and expiry; exit status 0 when it verifies, 15 with one line "
        "naming what is wrong when it is refused.",
    )
    release_verify.add_argument("bundle", type=Path, metavar="BUNDLE", help="the bundle folder")
    release_verify.add_argument(
        "--trusted-key",
        required=True,
        type=Path,
        metavar="K",
        help="public key (PEM) the bundle must be signed with",
    )
    release_verify.add_argument(
        "--current-release",
        type=_release_number,
        metavar="N",
        help="number of the release the device runs now; the bundle's must be greater",
    )
    release_verify.add_argument(
        "--signature", type=Path, metavar="S", help="signature file (default BUNDLE.sig beside the folder)"
    )
    release_verify.add_argument("--fleet", metavar="F", help="the device's fleet; the bundle must be for it")
    release_verify.set_defaults(func=cmd_release_verify)
    approve = relsub.add_parser(
        "approve",
        help="approve (or reject) a release waiting in fleet_release, through Airflow's REST API",
        description="Answer the human-in-the-loop approval of the fleet_release run that waits with a "
        "release for fleet F, as the Required Actions page of Airflow's UI would: who answered and "
        "when is recorded with the rollout. Needs Airflow's api-server (`slimline fleet release` "
        "starts one on 127.0.0.1 for fleets that require approval). With --user, the password comes "
        "from $SLIMLINE_AIRFLOW_PASSWORD or a prompt.",
    )
    approve.add_argument("--fleet", required=True, metavar="F", help="the fleet whose release waits")
    approve.add_argument(
        "--release", type=_release_number, metavar="N", help="its release number, when several wait"
    )
    approve.add_argument("--reject", action="store_true", help="reject instead of approving")
    approve.add_argument("--comment", default="", help="why; kept with the release's record")
    approve.add_argument("--user", help="Airflow user (simple auth manager); default: anonymous admin")
    approve.add_argument("--api-url", metavar="URL", help="Airflow API (default $SLIMLINE_AIRFLOW_API_URL)")
    approve.set_defaults(func=cmd_release_approve)

    fleet = sub.add_parser("fleet", help="release to a fleet, see what it runs, roll it back")
    fsub = fleet.add_subparsers(dest="action", required=True, metavar="ACTION")
    fleet_status = fsub.add_parser(
        "status",
        help="each device's release, attempt and health, the desired state and the latest rollout",
        description="Read fleet F's channel ($SLIMLINE_FLEET_CHANNEL, default <home>/channel): per device "
        "its labels, its wave, the release the desired state tells it to run, the target, release and "
        "model version it runs, its last attempt and result, its canary health (agreement, accuracy, "
        "p95 latency, errors) and the age of its last report; the desired state, checked against the "
        "release key's public half; the latest rollout with each wave's counts and decision.",
    )
    fleet_status.add_argument("fleet", metavar="F", help="fleet name (fleets/F.yaml)")
    fleet_status.add_argument(
        "--html",
        nargs="?",
        const="",  # a string: argparse would turn a Path const into "."
        metavar="PATH",
        help="also write the HTML page, to PATH or by default <home>/reports/fleet-F.html",
    )
    fleet_status.add_argument("--json", action="store_true", help="print the status as JSON instead")
    fleet_status.set_defaults(func=cmd_fleet_status)
    fleet_rollback = fsub.add_parser(
        "rollback",
        help="return every device of fleet F to the release before its latest rollout",
        description="Bundle the release that was the fleet's before its latest rollout again, as a new "
        "and higher release number (devices refuse a number they have passed), signed with the release "
        "key, publish it to the channel and tell every device, including those that already switched, "
        "to run it. With no release before it, publishes a desired state naming none, so no further "
        "device installs the rolled-out release (devices that have it keep serving it). Recorded in "
        "the rollout's record; running it again changes nothing.",
    )
    fleet_rollback.add_argument("fleet", metavar="F", help="fleet name (fleets/F.yaml)")
    fleet_rollback.add_argument(
        "--reason",
        default="rolled back by hand (slimline fleet rollback)",
        metavar="TEXT",
        help="why, recorded in the rollout record and the desired state's note",
    )
    fleet_rollback.set_defaults(func=cmd_fleet_rollback)
    fleet_release = fsub.add_parser(
        "release",
        help="run the fleet_release DAG: engines, signed release, approval, waves, rollback on failure",
        description="Run one real fleet_release DAG run (airflow dags test) for fleet F: build the "
        "version's engines for the fleet's targets, bundle and sign the next release, ask for approval "
        "where the fleet requires it, then roll it out wave by wave, each judged on its devices' "
        "canary health; "
        "on success the registry alias fleet-F moves to the version, on abort every device of the fleet "
        "returns to the previous release and the run fails. For fleets that require approval an Airflow "
        "api-server is started on $SLIMLINE_AIRFLOW_API_URL for the time of the run: answer with "
        "`slimline release approve --fleet F` or in Airflow's UI (Required Actions).",
    )
    fleet_release.add_argument("fleet", metavar="F", help="fleet name (fleets/F.yaml)")
    fleet_release.add_argument(
        "--model-version",
        default="",
        metavar="NAME/VERSION",
        help="version (or NAME/ALIAS) to release; default the candidate of the recipe's model",
    )
    fleet_release.set_defaults(func=cmd_fleet_release)

    agent = sub.add_parser(
        "agent",
        help="run the edge agent of one device: poll the fleet channel, install, check, serve",
        description="The long-running agent of one device. It enrolls in fleet F with its capabilities "
        "(CPU flags, runtime versions, GPUs), polls the fleet channel every --poll-seconds (jittered), and "
        "when the device's desired release changes: checks which of the release's engines it can run "
        "before downloading any, downloads only that one, verifies signature, digests, expiry and "
        "release number, runs a smoke inference and the canary set against the fleet's health criteria, "
        "and only then switches (state.json renamed into DIR), keeping the previous release for rollback. "
        "It reports to the channel (active, failed, rejected, rolled_back with one-line reasons) and serves "
        'on 127.0.0.1: POST /predict {"texts": [...]}, GET /healthz, GET /version. DIR/agent.json says '
        "its pid and port. SIGTERM stops it. Exit status 15 when a release or key is refused at start, "
        "2 for a bad argument.",
    )
    agent.add_argument("--fleet", required=True, metavar="F", help="the fleet the device belongs to")
    agent.add_argument("--device-id", required=True, metavar="D", help="the device's name in the fleet")
    agent.add_argument("--root", required=True, type=Path, metavar="DIR", help="the device's state folder")
    agent.add_argument(
        "--channel", metavar="URI", help="fleet channel store (default $SLIMLINE_FLEET_CHANNEL)"
    )
    agent.add_argument(
        "--trusted-key",
        type=Path,
        metavar="K",
        help="release public key (default: $SLIMLINE_SIGNING_KEY with .pub added)",
    )
    agent.add_argument(
        "--label",
        action="append",
        type=_label,
        metavar="KEY=VALUE",
        help="a label for wave selectors; repeatable",
    )
    agent.add_argument(
        "--host",
        default="127.0.0.1",
        help="address the prediction server listens on (default 127.0.0.1; 0.0.0.0 in a container "
        "whose port is published)",
    )
    agent.add_argument("--port", type=int, default=0, help="port to listen on (default 0: any free one)")
    agent.add_argument("--poll-seconds", type=float, default=30.0, help="mean seconds between polls (30)")
    agent.add_argument("--jitter", type=float, default=0.2, help="each wait varies by ± this share (0.2)")
    agent.add_argument(
        "--cpuinfo",
        type=Path,
        default=Path("/proc/cpuinfo"),
        metavar="FILE",
        help="read CPU flags from FILE instead of /proc/cpuinfo (to simulate another kind of device)",
    )
    agent.add_argument("--once", action="store_true", help="start, poll once, report, exit (no server)")
    agent.set_defaults(func=cmd_agent)

    audit = sub.add_parser("audit", help="the append-only, hash-chained audit log and its signed heads")
    asub = audit.add_subparsers(dest="action", required=True, metavar="ACTION")
    audit_verify = asub.add_parser(
        "verify",
        help="check every record and signed head of the audit log (exit 0 ok, 17 tampered)",
        description="Walk the audit log ($SLIMLINE_AUDIT_LOG, default <home>/audit) in seq order: every "
        "record must parse, sit under its own seq with no gaps and carry the sha256 of the record "
        "before it, and every signed head must be signed by the trusted key and match the record at "
        "its seq, with no record missing below it. Prints counts, the last signed head and how many "
        "records follow it unsigned; then checks that every engine a device of any fleet in the "
        "channel reports active was released to its fleet (a bundle.signed record names it). Exit "
        "status 17 with one line naming the first record or head that was edited, deleted, reordered, "
        "forged or truncated, or the first device running an engine never released to its fleet.",
    )
    audit_verify.add_argument(
        "--trusted-key",
        type=Path,
        metavar="K",
        help="public key (PEM) heads must be signed with (default: $SLIMLINE_SIGNING_KEY with .pub added)",
    )
    audit_verify.add_argument(
        "--witness",
        type=Path,
        metavar="FILE",
        help="where this verifier remembers the last signed head it checked, per log; a later run fails "
        "if that record is gone or changed (default: $SLIMLINE_AUDIT_WITNESS, <home>/audit-witness.json)",
    )
    audit_verify.add_argument("--json", action="store_true", help="print the report as JSON")
    audit_verify.set_defaults(func=cmd_audit_verify)
    audit_fleet = asub.add_parser(
        "fleet",
        help="what each device of fleet F runs and where it came from",
        description="For each device of fleet F (devices sharing one lineage grouped): active release, "
        "engine digest, model version, variant run, checkpoint URI and digest, dataset digest and its "
        "validation, recipe digest, code commit, gate verdict with reasons, approver and time; joined "
        "from the devices' reports in the channel, each release's release.json and the audit log.",
    )
    audit_fleet.add_argument("fleet", metavar="F", help="fleet name")
    audit_fleet.add_argument("--json", action="store_true", help="print the lineages as JSON")
    audit_fleet.set_defaults(func=cmd_audit_fleet)
    audit_device = asub.add_parser(
        "device",
        help="what device D runs, where it came from, and its activations and rollbacks",
        description="The chain of `audit fleet` for one device (active release, engine digest, model "
        "version, variant run, checkpoint, dataset and validation, recipe, code commit, gate verdict, "
        "approver), then its history from the audit log with times: every release it activated or "
        "rolled back from, and its fleet's rollbacks.",
    )
    audit_device.add_argument("device", metavar="D", help="device id")
    audit_device.add_argument(
        "--fleet",
        metavar="F",
        help="the device's fleet (needed only when several fleets enrolled a device D)",
    )
    audit_device.add_argument("--json", action="store_true", help="print the trace as JSON")
    audit_device.set_defaults(func=cmd_audit_device)
    audit_version = asub.add_parser(
        "version",
        help="where model version NAME/VERSION runs, and every decision about it",
        description="The devices of every fleet in the channel whose active release carries the version "
        "(by fleet, release and target), then every audit record about it in log order: the checkpoint "
        "verification and data validation of its run, its gates, registration and aliases, engines, "
        "signed bundles, approvals asked, given or refused, waves, device activations and rollbacks, "
        "and fleet rollbacks that removed or restored it.",
    )
    audit_version.add_argument(
        "model_version", metavar="NAME/VERSION", type=_model_version, help="e.g. minilm-sentiment/7"
    )
    audit_version.add_argument("--json", action="store_true", help="print the trace as JSON")
    audit_version.set_defaults(func=cmd_audit_version)
    audit_sign = asub.add_parser(
        "sign-head",
        help="sign the audit log's current head with the release key now",
        description="Sign {seq, hash, count, at} of the log's last record with the release key "
        "($SLIMLINE_SIGNING_KEY) into heads/<seq>.json, as appends do every $SLIMLINE_AUDIT_HEAD_EVERY "
        "records: records up to it can then no longer be edited, deleted or cut off unnoticed. "
        "Run it at the end of a DAG run. A head already signed at that seq is kept.",
    )
    audit_sign.set_defaults(func=cmd_audit_sign_head)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        # MLflow installs its own INFO handler (e.g. "Creating initial MLflow database tables").
        logging.getLogger("mlflow").setLevel(logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # MLflow draws a progress bar per download on stderr; errors there must stay one line.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        return int(args.func(args))
    except SlimlineError as exc:
        print(f"slimline: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("slimline: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
