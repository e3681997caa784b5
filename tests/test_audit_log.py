"""tasks.audit: the hash-chained audit log on file:// and on moto's S3 server, real signatures, real
processes appending at once, and every tampering case `verify` must name (exact messages)."""

from __future__ import annotations

import itertools
import json
import multiprocessing
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tasks.audit.chain import AuditLog, head_key
from tasks.audit.heads import Head, sign_head
from tasks.audit.log import append, append_event, read_records
from tasks.audit.records import GENESIS, RECORD_KINDS, Record, encode, record_hash, record_key
from tasks.audit.verify import verify
from tasks.audit.witness import Seen
from tasks.cli import main
from tasks.core.errors import AuditFailed
from tasks.core.settings import Settings
from tasks.core.store import Fetched, FileStore, ObjectInfo, ObjectStore, S3Store, open_store
from tasks.release.keys import generate_key_pair, key_id
from tasks.release.metadata import sign_document

RECORDS = 45  # heads every 10: signed heads 10..40, an unsigned tail of 5
T0 = datetime(2026, 5, 1, 2, 0, tzinfo=UTC)
KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_KEY = ec.generate_private_key(ec.SECP256R1())


def _open(request: pytest.FixtureRequest, tmp_path: Path, kind: str) -> ObjectStore:
    if kind == "file":
        (tmp_path / "audit").mkdir()
        return open_store((tmp_path / "audit").as_uri())
    bucket: str = request.getfixturevalue("s3_bucket")
    return open_store(f"s3://{bucket}/audit", request.getfixturevalue("moto_endpoint"))


@pytest.fixture(params=["file", "s3"])
def audit(request: pytest.FixtureRequest, tmp_path: Path) -> AuditLog:
    return AuditLog(store=_open(request, tmp_path, request.param), head_every=10)


def _kind(seq: int) -> Any:
    return RECORD_KINDS[(seq - 1) % len(RECORD_KINDS)]


def _fill(audit: AuditLog, count: int = RECORDS, key: ec.EllipticCurvePrivateKey | None = KEY) -> None:
    for seq in range(1, count + 1):
        append(
            audit,
            _kind(seq),
            f"model_version:minilm/{seq}",
            {"digest": f"{seq:064x}", "verdict": "pass", "reasons": ["p95 ok"]},
            "nightly_compression",
            T0 + timedelta(seconds=seq),
            key,
        )


def _raw(audit: AuditLog, key: str) -> bytes:
    fetched = audit.store.get(key, 1 << 20)
    assert fetched is not None and fetched.data is not None
    return fetched.data


def _delete(audit: AuditLog, key: str) -> None:
    store = audit.store
    if isinstance(store, FileStore):
        (store.root / key).unlink()
    else:
        assert isinstance(store, S3Store)
        store.client.delete_object(Bucket=store.bucket, Key=store._key(key))


def _failure(audit: AuditLog) -> str:
    with pytest.raises(AuditFailed) as info:
        verify(audit, KEY.public_key())
    message = str(info.value)
    assert "\n" not in message
    return message.removeprefix(f"audit log {audit.uri}: ")


def test_appends_chain_sign_heads_and_verify(audit: AuditLog) -> None:
    _fill(audit)
    records = list(read_records(audit))
    assert [r.seq for r in records] == list(range(1, RECORDS + 1))
    assert records[0].prev == GENESIS
    assert all(b.prev == record_hash(a) for a, b in itertools.pairwise(records))
    assert [o.key for o in audit.store.list("heads")] == [head_key(s) for s in (10, 20, 30, 40)]
    report = verify(audit, KEY.public_key())
    assert (report.records, report.heads, report.last_head_seq, report.unsigned_tail) == (45, 4, 40, 5)
    assert report.last_head_at == T0 + timedelta(seconds=40)
    # Nothing is ever overwritten: a second create of a taken seq is refused, its bytes kept.
    before = _raw(audit, record_key(7))
    assert audit.store.create(record_key(7), b"{}") is False
    assert _raw(audit, record_key(7)) == before


class RivalFirst:
    """The audit store, with another writer appending just before this writer's first claim: the
    claim of a seq that was free when the tail was read, and is taken when it is written."""

    def __init__(self, store: ObjectStore, rival: Callable[[], Record]) -> None:
        self.store, self.rival, self.uri, self.remote = store, rival, store.uri, store.remote
        self.rival_record: Record | None = None

    def list(self, prefix: str) -> list[ObjectInfo]:
        return self.store.list(prefix)

    def download(self, key: str, dest: Path) -> None:
        self.store.download(key, dest)

    def upload(self, src: Path, key: str) -> None:
        self.store.upload(src, key)

    def get(self, key: str, limit: int, if_none_match: str | None = None) -> Fetched | None:
        return self.store.get(key, limit, if_none_match)

    def put(self, key: str, data: bytes) -> None:
        self.store.put(key, data)

    def create(self, key: str, data: bytes) -> bool:
        if self.rival_record is None:
            self.rival_record = self.rival()
        return self.store.create(key, data)


def test_a_taken_seq_is_refused_and_the_writer_links_to_the_winner(audit: AuditLog) -> None:
    _fill(audit, 3)
    rival = RivalFirst(
        audit.store,
        lambda: append(audit, "approval.given", "fleet:staging", {"by": "alice"}, "alice", T0),
    )
    record = append(
        AuditLog(store=rival, head_every=10), "wave.started", "fleet:staging", {}, "fleet_release", T0
    )
    assert rival.rival_record is not None and rival.rival_record.seq == 4
    assert record.seq == 5 and record.prev == record_hash(rival.rival_record)
    assert Record.model_validate_json(_raw(audit, record_key(4))) == rival.rival_record
    assert verify(audit, KEY.public_key()).records == 5


def _writer(uri: str, endpoint: str | None, name: str, count: int, key_pem: bytes, start: Any) -> None:
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    audit = AuditLog(store=open_store(uri, endpoint), head_every=5)
    start.wait()
    for i in range(count):
        append(audit, "device.activated", f"device:{name}", {"i": i}, name, datetime.now(UTC), key)


def test_processes_appending_at_once_make_one_chain(audit: AuditLog) -> None:
    endpoint = audit.store.client.meta.endpoint_url if isinstance(audit.store, S3Store) else None
    pem = KEY.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    context = multiprocessing.get_context("fork")
    start = context.Event()
    writers = [
        context.Process(target=_writer, args=(audit.uri, endpoint, name, 25, pem, start)) for name in "ab"
    ]
    for process in writers:
        process.start()
    start.set()
    for process in writers:
        process.join(120)
        assert process.exitcode == 0
    report = verify(audit, KEY.public_key())
    assert report.records == 50 and report.last_head_seq == 50
    actors = [r.actor for r in read_records(audit)]
    assert sorted(actors) == ["a"] * 25 + ["b"] * 25
    assert sum(x != y for x, y in itertools.pairwise(actors)) > 1, "the writers never overlapped"


def _edited(record: Record, field: str) -> Record:
    changes: dict[str, Any] = {
        "subject": record.subject + "x",
        "data": {**record.data, "verdict": "fail"},
        "actor": "mallory",
        "at": record.at + timedelta(seconds=1),
        "kind": RECORD_KINDS[record.seq % len(RECORD_KINDS)],
        "prev": "f" * 64,
    }
    return record.model_copy(update={field: changes[field]})


def test_an_edit_of_any_record_kind_names_the_record(audit: AuditLog) -> None:
    """Records 1..17 hold one of each kind; each gets one field edited (the fields in turn)."""
    _fill(audit, len(RECORD_KINDS) + 1)
    fields = ["subject", "data", "actor", "at", "kind", "prev"]
    found, expected = [], []
    for seq, kind in enumerate(RECORD_KINDS, start=1):
        original = _raw(audit, record_key(seq))
        record = Record.model_validate_json(original)
        assert record.kind == kind
        field = fields[seq % len(fields)]
        audit.store.put(record_key(seq), encode(_edited(record, field)))
        found.append((kind, field, _failure(audit)))
        audit.store.put(record_key(seq), original)
        witness = "signed head 10" if seq == 10 else f"record {seq + 1}'s prev"
        if field != "prev":
            expected.append((kind, field, f"record {seq} was edited: its hash no longer matches {witness}"))
        elif seq == 1:
            expected.append((kind, field, "record 1 was edited: its prev must be 64 zeros"))
        else:
            expected.append(
                (
                    kind,
                    field,
                    f"record {seq} was edited: its prev no longer matches record {seq - 1}'s hash "
                    f"and its hash no longer matches {witness}",
                )
            )
    assert found == expected
    verify(audit, KEY.public_key())  # every record restored: it passes again


def test_deleted_reordered_truncated_and_forged_records_are_named(audit: AuditLog) -> None:
    _fill(audit)
    trusted_id, other_id = key_id(KEY.public_key()), key_id(OTHER_KEY.public_key())

    saved = _raw(audit, record_key(23))
    _delete(audit, record_key(23))
    assert _failure(audit) == (
        "record 23 is missing: record 22 is followed by record 24 (deleted); "
        "records are numbered 1, 2, 3… with no gaps"
    )
    audit.store.put(record_key(23), saved)

    twelve, fifteen = _raw(audit, record_key(12)), _raw(audit, record_key(15))
    audit.store.put(record_key(12), fifteen)
    audit.store.put(record_key(15), twelve)
    assert _failure(audit) == (
        "record 12 is out of place: records/000000000012.json holds record 15 (reordered); "
        "a record's seq must match its key"
    )
    # Reordered with the seqs rewritten to match the keys: the chain names the first one moved.
    moved = Record.model_validate_json(fifteen).model_copy(update={"seq": 12})
    audit.store.put(record_key(12), encode(moved))
    assert _failure(audit) == (
        "record 12 was edited: its prev no longer matches record 11's hash "
        "and its hash no longer matches record 13's prev"
    )
    audit.store.put(record_key(12), twelve)
    audit.store.put(record_key(15), fifteen)

    forged = Record(
        seq=46, at=T0, kind="device.activated", subject="device:d1", data={}, actor="agent", prev="a" * 64
    )
    assert audit.store.create(record_key(46), encode(forged))
    assert _failure(audit) == (
        "record 46 after the last signed head 40 does not link to record 45: its prev is not record 45's "
        "hash (forged, or appended without a valid link)"
    )
    _delete(audit, record_key(46))

    head = Head(
        seq=45, hash=record_hash(Record.model_validate_json(_raw(audit, record_key(45)))), count=45, at=T0
    )
    assert audit.store.create(head_key(45), sign_document(head.model_dump(mode="json"), OTHER_KEY))
    assert _failure(audit) == (
        f"signed head 45 (heads/000000000045.json): not signed by the trusted key {trusted_id[:16]}… "
        f"(signed by: {other_id[:16]})"
    )
    _delete(audit, head_key(45))
    verify(audit, KEY.public_key())

    for seq in range(35, RECORDS + 1):
        _delete(audit, record_key(seq))
    assert _failure(audit) == (
        "records 35 to 40 are missing below signed head 40 (truncated); "
        "every record up to a signed head must exist"
    )


def _rechain(audit: AuditLog, start: int, end: int) -> None:
    """What a writer without the key can do: rewrite records `start`..`end` with a valid chain
    from record `start - 1` on (prev links recomputed), and delete every head from `start` on."""
    prev = record_hash(Record.model_validate_json(_raw(audit, record_key(start - 1))))
    for seq in range(start, end + 1):
        record = Record.model_validate_json(_raw(audit, record_key(seq)))
        record = record.model_copy(update={"prev": prev, "actor": "rewritten"})
        audit.store.put(record_key(seq), encode(record))
        prev = record_hash(record)
    for info in audit.store.list("heads/"):
        if int(info.key[6:18]) >= start:
            _delete(audit, info.key)


def test_a_remembered_head_catches_a_cut_or_a_rewrite_with_the_heads_above_it_deleted(
    audit: AuditLog,
) -> None:
    _fill(audit)
    report = verify(audit, KEY.public_key())
    assert report.witness == "no head seen before"
    assert report.last_head_seq == 40 and report.last_head_hash is not None
    seen = Seen(seq=40, hash=report.last_head_hash, signed_at=T0, verified_at=T0 + timedelta(hours=1))
    assert verify(audit, KEY.public_key(), seen).witness == "signed head 40 seen before still holds"

    # Records 31 to 45 and heads 40 (and above) deleted: what is left is a valid log of 30 records,
    # signed up to head 30; only the remembered head 40 says it was longer.
    saved = {seq: _raw(audit, record_key(seq)) for seq in range(31, RECORDS + 1)}
    saved_head = _raw(audit, head_key(40))
    for seq in saved:
        _delete(audit, record_key(seq))
    _delete(audit, head_key(40))
    assert verify(audit, KEY.public_key()).records == 30
    with pytest.raises(AuditFailed) as cut:
        verify(audit, KEY.public_key(), seen)
    assert str(cut.value) == (
        f"audit log {audit.uri}: records 31 to 40 are missing below the signed head 40 this verifier "
        "checked at 2026-05-01 03:00:00 UTC (truncated, and the heads above the cut deleted)"
    )
    for seq, body in saved.items():
        audit.store.put(record_key(seq), body)
    audit.store.put(head_key(40), saved_head)

    # Records 32 on rewritten with a valid chain and the heads from 32 on deleted.
    _rechain(audit, 32, RECORDS)
    assert verify(audit, KEY.public_key()).last_head_seq == 30
    with pytest.raises(AuditFailed) as rewritten:
        verify(audit, KEY.public_key(), seen)
    assert str(rewritten.value) == (
        f"audit log {audit.uri}: record 40 was rewritten: its hash no longer matches the signed head 40 "
        "this verifier checked at 2026-05-01 03:00:00 UTC"
    )


def test_malformed_record_and_unsigned_log(audit: AuditLog) -> None:
    _fill(audit, 12, key=None)
    report = verify(audit, KEY.public_key())
    assert (report.records, report.heads, report.last_head_seq, report.unsigned_tail) == (12, 0, None, 12)
    head = sign_head(audit, KEY, T0)
    assert head is not None and head.seq == 12
    assert verify(audit, KEY.public_key()).unsigned_tail == 0
    audit.store.put(record_key(7), b'{"seq": 7}')
    assert _failure(audit) == "record 7 is malformed: at: Field required"


def test_cli_verify_and_sign_head(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    home = ["--home", str(settings.home)]
    generate_key_pair(settings.signing_key)
    assert main([*home, "audit", "sign-head"]) == 0
    assert capsys.readouterr().out.strip().endswith("is empty; nothing to sign")
    for i in range(3):
        append_event(settings, "wave.promoted", "fleet:staging", {"wave": i}, "fleet_release", T0)
    assert main([*home, "audit", "sign-head"]) == 0
    assert capsys.readouterr().out.startswith(
        f"signed head 3 of {settings.audit_log_uri}: record 3 hashes to "
    )
    assert main([*home, "audit", "verify"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"ok {settings.audit_log_uri}: 3 records, 1 signed heads")
    assert main([*home, "audit", "verify", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["last_head_seq"] == 3
    # The CLI remembers the last head it verified; a log cut below it then fails.
    witness = json.loads((settings.home / "audit-witness.json").read_text())
    assert witness[settings.audit_log_uri]["seq"] == 3
    saved = (settings.home / "audit" / record_key(3)).read_bytes()
    (settings.home / "audit" / record_key(3)).unlink()
    (settings.home / "audit" / head_key(3)).unlink()
    assert main([*home, "audit", "verify"]) == 17
    assert "record 3 is missing below the signed head 3 this verifier checked at" in capsys.readouterr().err
    (settings.home / "audit" / record_key(3)).write_bytes(saved)
    (settings.home / "audit" / record_key(2)).unlink()
    assert main([*home, "audit", "verify"]) == 17
    err = capsys.readouterr().err
    assert err == (
        f"slimline: error: audit log {settings.audit_log_uri}: record 2 is missing: record 1 is followed "
        "by record 3 (deleted); records are numbered 1, 2, 3… with no gaps\n"
    )
