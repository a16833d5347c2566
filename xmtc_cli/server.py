"""`xmtc serve`: a small HTTP JSON API that keeps one model loaded (standard library only).

    GET  /health    {"status": "ok", "labels": L, "feature_size": D, "threshold": t or null}
    POST /suggest   {"text": "...", "top_k": K, "min_score": s, "threshold": t|"tuned"|null,
                     "features": [D floats]}  ->  {"labels": [{"label", "name", "score",
                     "in_set"}, ...]}, the objects of `xmtc predict --format jsonl`

Every answer is JSON; an error is {"error": "..."} with a 4xx status (a 500 for a failure of
ours, whose detail goes to the log, not to the client). What a client can make the server do is
bounded: a body needs a Content-Length of at most `max_body` bytes (the body is not read
otherwise), every read of the socket times out after `timeout` seconds, top_k is at most the
number of labels, and one document at a time is predicted (a lock: the model is shared, and a
CPU runs one forward pass best at a time).

A default thread count on the CPU follows the load as training's does (`threads.LoadWatch`):
every 10 s a background thread looks at the cores other processes kept busy and, between two
requests (under the same lock), applies the count the default would choose for them.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from xmtc_cli.inference import Predictor
from xmtc_cli.suggest import rank_needed, suggest
from xmtc_cli.threads import LoadWatch, follow_load

log = logging.getLogger(__name__)

MAX_BODY = 1_000_000  # bytes
TIMEOUT = 10.0  # seconds for each read of a request
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class RequestError(Exception):
    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class SuggestService:
    """A loaded predictor and the defaults of the command that started it; `watch`, a
    default thread count's `LoadWatch` (None: the count stays), whose changes are told to
    `notice(text)`."""

    def __init__(self, predictor: Predictor, top_k: int = 10, min_score: float = 0.0,
                 threshold: float | None = None, watch: LoadWatch | None = None,
                 notice: Callable[[str], Any] | None = None):
        self.predictor = predictor
        self.top_k = top_k
        self.min_score = min_score
        self.threshold = threshold
        self.names = predictor.names
        self.lock = threading.Lock()
        self.watch = watch
        self.notice = notice
        self._stopped = threading.Event()

    def follow_load(self) -> int | None:
        """The count the watch asks for now, applied between two requests; None if none."""
        with self.lock:
            return follow_load(self.watch, self.notice)

    def watch_load(self) -> threading.Thread | None:
        """Start a daemon thread that calls `follow_load` every `watch.seconds` until `stop`;
        None (and no thread) where there is no active watch."""
        if self.watch is None or not self.watch.active:
            return None
        thread = threading.Thread(target=self._follow, name="xmtc-load-watch", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stopped.set()

    def _follow(self) -> None:
        while not self._stopped.wait(self.watch.seconds):
            try:
                self.follow_load()
            except Exception:  # the watch is a courtesy: a failure must not end the server
                log.exception("the load watch stopped")
                return

    def health(self) -> dict[str, Any]:
        tuned = self.predictor.threshold
        return {"status": "ok", "labels": len(self.predictor.labels),
                "feature_size": self.predictor.feature_size,
                "threshold": tuned["threshold"] if tuned else None}

    def suggest(self, request: Any) -> dict[str, Any]:
        if not isinstance(request, dict):
            raise RequestError(HTTPStatus.BAD_REQUEST, "the body must be a JSON object")
        unknown = sorted(set(request) - {"text", "top_k", "min_score", "threshold", "features",
                                         "id"})
        if unknown:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"unknown field {unknown[0][:40]!r}; "
                               "known: text, top_k, min_score, threshold, features, id")
        text = request.get("text")
        if not isinstance(text, str):
            raise RequestError(HTTPStatus.BAD_REQUEST, '"text" must be a string')
        labels = len(self.predictor.labels)
        top_k = request.get("top_k", self.top_k)
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 0 <= top_k <= labels:
            raise RequestError(HTTPStatus.BAD_REQUEST,
                               f'"top_k" must be an integer from 0 to {labels}')
        min_score = _number(request.get("min_score", self.min_score), "min_score", 0.0, 1.0)
        threshold = self._threshold(request.get("threshold", self.threshold))
        features = self._features(request.get("features"))
        rank = rank_needed(top_k, threshold, self.predictor.steps)
        with self.lock:
            pred = self.predictor.predict_texts([text], features, rank)[0]
        found = suggest(pred, self.predictor.labels, self.names, top_k, min_score, threshold)
        answer: dict[str, Any] = {"labels": [s.to_dict() for s in found]}
        if "id" in request:
            answer = {"id": request["id"], **answer}
        return answer

    def _threshold(self, value: Any) -> float | None:
        if value is None:
            return None
        if value == "tuned":
            tuned = self.predictor.threshold
            if tuned is None:
                raise RequestError(HTTPStatus.BAD_REQUEST,
                                   "the model holds no tuned threshold")
            return float(tuned["threshold"])
        value = _number(value, "threshold", 0.0, 1.0)
        if value <= 0:
            raise RequestError(HTTPStatus.BAD_REQUEST, '"threshold" must be above 0')
        return value

    def _features(self, value: Any) -> np.ndarray | None:
        width = self.predictor.feature_size
        if value is None:
            if width:
                raise RequestError(HTTPStatus.BAD_REQUEST, f'this model reads side features: '
                                   f'give "features", a list of {width} numbers')
            return None
        if not width:
            raise RequestError(HTTPStatus.BAD_REQUEST,
                               'this model was trained without side features: leave out '
                               '"features"')
        if (not isinstance(value, list) or len(value) != width
                or not all(_finite(x) for x in value)):
            raise RequestError(HTTPStatus.BAD_REQUEST,
                               f'"features" must be a list of {width} finite numbers')
        return np.asarray([value], dtype=np.float32)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _number(value: Any, name: str, low: float, high: float) -> float:
    if not _finite(value) or not low <= value <= high:
        raise RequestError(HTTPStatus.BAD_REQUEST, f'"{name}" must be a number from {low:g} '
                           f"to {high:g}")
    return float(value)


class Handler(BaseHTTPRequestHandler):
    server: SuggestServer
    protocol_version = "HTTP/1.1"
    server_version = "xmtc"

    def setup(self) -> None:
        self.timeout = self.server.read_timeout  # every read of the socket
        super().setup()

    def do_GET(self) -> None:  # the standard library names it
        if self.path == "/health":
            self._send(HTTPStatus.OK, self.server.service.health())
        else:
            self._refuse(HTTPStatus.NOT_FOUND, "no such path: GET /health, POST /suggest")

    def do_POST(self) -> None:
        if self.path != "/suggest":
            self._refuse(HTTPStatus.NOT_FOUND, "no such path: GET /health, POST /suggest")
            return
        try:
            body = self._body()
            try:
                request = json.loads(body)
            except (ValueError, UnicodeDecodeError) as exc:
                raise RequestError(HTTPStatus.BAD_REQUEST,
                                   f"the body is not JSON: {exc}"[:200]) from None
            self._send(HTTPStatus.OK, self.server.service.suggest(request))
        except RequestError as exc:
            self._refuse(exc.status, exc.message)
        except TimeoutError:
            self.close_connection = True
        except Exception:  # a failure of ours: logged in full, the client told little
            log.exception("xmtc serve: a request failed")
            self._refuse(HTTPStatus.INTERNAL_SERVER_ERROR, "the server failed on this request")

    def _body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding"):
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "send the body with a Content-Length")
        if length is None:
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "a Content-Length header is needed")
        try:
            size = int(length)
        except ValueError:
            size = -1
        if size < 0:
            raise RequestError(HTTPStatus.BAD_REQUEST, "a bad Content-Length")
        if size > self.server.max_body:
            raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                               f"the body has {size:,} bytes; at most "
                               f"{self.server.max_body:,} are read")
        body = self.rfile.read(size)
        if len(body) < size:
            raise RequestError(HTTPStatus.BAD_REQUEST, "the body ended before its Content-Length")
        return body

    def _refuse(self, status: HTTPStatus, message: str) -> None:
        # An unread body would be read as the next request: close instead.
        self.close_connection = True
        self._send(status, {"error": message})

    def _send(self, status: HTTPStatus, payload: dict) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None
                   ) -> None:
        """The standard library's own refusals (a bad request line, an unknown method, headers
        too long) as JSON too."""
        self.close_connection = True
        try:
            status = HTTPStatus(code)
        except ValueError:
            status = HTTPStatus.BAD_REQUEST
        self._send(status, {"error": message or status.phrase})

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)


class SuggestServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, service: SuggestService, host: str = "127.0.0.1", port: int = 0,
                 max_body: int = MAX_BODY, read_timeout: float = TIMEOUT):
        if ":" in host:
            import socket

            self.address_family = socket.AF_INET6
        self.service = service
        self.max_body = max_body
        self.read_timeout = read_timeout
        super().__init__((host, port), Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in str(host) else host
        return f"http://{host}:{port}"
