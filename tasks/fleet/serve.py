"""Predictions from the active engine over HTTP (ThreadingHTTPServer in a thread; 127.0.0.1 unless
told otherwise, e.g. 0.0.0.0 inside a container whose port is published):

    POST /predict  {"texts": [...]}  →  {"labels": [...], "logits": [[...]], "release": N}
    GET  /healthz  200 while an engine is active, 503 otherwise
    GET  /version  release, target, model_version, engine_digest, previous

Texts are tokenized with the `tokenizers` library from the engine's own tokenizer.json, truncated to
the engine's longest sequence and sent in batches its profiles accept. The active engine sits in a
Slot; a request takes the slot's engine once and keeps it to the end, and the agent swaps in a new
engine only after it is loaded and checked, so a switch leaves no gap and mixes no two engines.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from tasks.core.errors import EngineError
from tasks.engines.build import engine_digest, load_engine
from tasks.engines.info import EngineInfo
from tasks.engines.runtime import Predictor
from tasks.fleet.channel import ActiveRelease
from tasks.fleet.device import Installed

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024**2
MAX_TEXTS = 256
MAX_TEXT_CHARS = 10_000
TOKENIZER_JSON = "tokenizer.json"


@dataclass(frozen=True)
class Serving:
    """A loaded engine with its tokenizer and the release it came from."""

    active: ActiveRelease
    info: EngineInfo
    predictor: Predictor
    tokenizer: Any  # tokenizers.Tokenizer, truncating to the engine's longest sequence
    pad_id: int

    def predict(self, texts: list[str]) -> np.ndarray:
        """Logits for `texts`, in batches no larger than the engine's profiles take."""
        max_batch = max(p.batch.max for p in self.info.profiles)
        min_sequence = min(p.sequence.min for p in self.info.profiles)
        parts = []
        for start in range(0, len(texts), max_batch):
            encodings = self.tokenizer.encode_batch(texts[start : start + max_batch])
            length = max([min_sequence, *(len(e.ids) for e in encodings)])
            ids = np.full((len(encodings), length), self.pad_id, dtype=np.int64)
            mask = np.zeros((len(encodings), length), dtype=np.int64)
            for row, encoding in enumerate(encodings):
                ids[row, : len(encoding.ids)] = encoding.ids
                mask[row, : len(encoding.ids)] = 1
            parts.append(self.predictor.predict(ids, mask))
        return np.concatenate(parts)


def load_serving(installed: Installed, activated_at: datetime) -> Serving:
    """The installed (verified) release's engine, loaded with its tokenizer; EngineError if it
    cannot be."""
    from tokenizers import Tokenizer

    info, predictor = load_engine(installed.engine_dir)
    try:
        tokenizer = Tokenizer.from_file(str(installed.engine_dir / TOKENIZER_JSON))
    except Exception as exc:  # the tokenizers library raises its own exception types
        raise EngineError(
            f"engine {installed.engine_dir}: {TOKENIZER_JSON} cannot be loaded ({exc})"
        ) from None
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max(p.sequence.max for p in info.profiles))
    active = ActiveRelease(
        release=installed.release.number,
        target=installed.target,
        model_version=installed.release.model_version,
        engine_digest=engine_digest(installed.engine_dir),
        activated_at=activated_at,
    )
    return Serving(active, info, predictor, tokenizer, tokenizer.token_to_id("[PAD]") or 0)


class Slot:
    """The engine being served, swapped whole under a lock, and the serving errors since the swap."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._serving: Serving | None = None
        self._previous: int | None = None
        self._errors = 0

    def swap(self, serving: Serving | None, previous: int | None) -> None:
        with self._lock:
            self._serving, self._previous, self._errors = serving, previous, 0

    def current(self) -> tuple[Serving | None, int | None]:
        with self._lock:
            return self._serving, self._previous

    def record_error(self) -> None:
        with self._lock:
            self._errors += 1

    @property
    def errors(self) -> int:
        with self._lock:
            return self._errors


class BadRequest(ValueError):
    pass


def parse_texts(body: bytes) -> list[str]:
    """The texts of a /predict body; BadRequest naming what is wrong and what is allowed."""
    try:
        document = json.loads(body)
    except ValueError:
        raise BadRequest('body is not JSON; expected {"texts": ["...", ...]}') from None
    texts = document.get("texts") if isinstance(document, dict) else None
    if not isinstance(texts, list) or not texts or len(texts) > MAX_TEXTS:
        raise BadRequest(f'expected {{"texts": [...]}} with 1 to {MAX_TEXTS} strings')
    if not all(isinstance(t, str) and len(t) <= MAX_TEXT_CHARS for t in texts):
        raise BadRequest(f"every text must be a string of at most {MAX_TEXT_CHARS} characters")
    return texts


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def _send(self, status: int, document: dict[str, Any]) -> None:
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        serving, previous = self.server.slot.current()
        if self.path == "/healthz":
            if serving is None:
                self._send(503, {"status": "no engine active"})
            else:
                self._send(200, {"status": "ok", "release": serving.active.release})
        elif self.path == "/version":
            active = serving.active if serving else None
            self._send(
                200,
                {
                    "release": active.release if active else None,
                    "target": active.target if active else None,
                    "model_version": active.model_version if active else None,
                    "engine_digest": active.engine_digest if active else None,
                    "previous": previous,
                },
            )
        else:
            self._send(404, {"error": f"no such path {self.path[:100]!r}; allowed: /healthz, /version"})

    def do_POST(self) -> None:
        if self.path != "/predict":
            self._send(404, {"error": f"no such path {self.path[:100]!r}; allowed: POST /predict"})
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._send(411, {"error": "a Content-Length header is required"})
            return
        if not 0 < length <= MAX_BODY_BYTES:
            self.close_connection = True  # the body is not read
            self._send(413, {"error": f"body of {length} bytes; allowed: 1 to {MAX_BODY_BYTES}"})
            return
        try:
            texts = parse_texts(self.rfile.read(length))
        except BadRequest as exc:
            self._send(400, {"error": str(exc)})
            return
        serving, _ = self.server.slot.current()  # this request's engine, whatever swaps meanwhile
        if serving is None:
            self._send(503, {"error": "no engine active"})
            return
        try:
            logits = serving.predict(texts)
        except Exception as exc:  # the runtime's own error types; counted for the agent's rollback
            self.server.slot.record_error()
            log.warning("prediction failed on release %s: %s", serving.active.release, exc)
            self._send(500, {"error": f"prediction failed on release {serving.active.release}"})
            return
        labels = [serving.info.labels[i] for i in logits.argmax(axis=1)]
        self._send(
            200,
            {"labels": labels, "logits": np.round(logits, 6).tolist(), "release": serving.active.release},
        )

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str, port: int, slot: Slot) -> None:
        self.slot = slot
        super().__init__((host, port), _Handler)


class PredictServer:
    """The HTTP server of one agent, serving from its Slot in a background thread."""

    def __init__(self, slot: Slot, port: int = 0, host: str = "127.0.0.1") -> None:
        self._server = _Server(host, port, slot)
        self._thread = threading.Thread(target=self._server.serve_forever, name="predict-server", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
