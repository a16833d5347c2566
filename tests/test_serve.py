"""`xmtc serve` against real sockets on 127.0.0.1: answers equal `xmtc predict --format jsonl`,
every refusal is JSON with its status, bodies and slow clients are bounded, and the command
starts, answers and stops on SIGTERM."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from xmtc_cli.inference import Predictor
from xmtc_cli.server import SuggestServer, SuggestService

pytestmark = pytest.mark.usefixtures("single_thread")
REPO = Path(__file__).parents[1]
TEXTS = ["rocket launch orbit astronaut", "whale dolphin coral reef plankton", ""]


@pytest.fixture(scope="module")
def server(tiny_run):
    predictor = Predictor.from_checkpoint(str(tiny_run.best), "cpu")
    srv = SuggestServer(SuggestService(predictor, top_k=10), "127.0.0.1", 0, max_body=2000,
                        read_timeout=0.5)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def request(srv, method: str, path: str, body: bytes | None = None,
            headers: dict | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.server_address[1], timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        assert response.getheader("Content-Type") == "application/json; charset=utf-8"
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def post(srv, payload) -> tuple[int, dict]:
    return request(srv, "POST", "/suggest", json.dumps(payload).encode())


def test_health(server):
    status, body = request(server, "GET", "/health")
    assert status == 200 and body["status"] == "ok" and body["labels"] == 24


def test_suggest_answers_what_predict_writes(server, tiny_run, tmp_path, cli):
    docs = tmp_path / "docs.txt"
    docs.write_text("".join(t + "\n" for t in TEXTS), encoding="utf-8")
    for top_k in (0, 10):
        want = [json.loads(line) for line in cli("predict", tiny_run.best, docs, "--format",
                                                 "jsonl", "--top-k", str(top_k)).out.splitlines()]
        for text, row in zip(TEXTS, want):
            status, body = post(server, {"text": text, "top_k": top_k})
            # One document alone against predict's batch of three: the same labels, scores
            # to float rounding (both printed to 6 decimals, which can round apart).
            assert status == 200 and list(body) == ["labels"]
            assert [{**x, "score": None} for x in body["labels"]] == [
                {**x, "score": None} for x in row["labels"]]
            assert [x["score"] for x in body["labels"]] == pytest.approx(
                [x["score"] for x in row["labels"]], abs=2e-6)
    status, body = post(server, {"text": TEXTS[0]})  # the server's default top_k: 10
    assert status == 200 and len(body["labels"]) >= 10
    status, body = post(server, {"id": "x1", "text": TEXTS[0], "top_k": 3, "min_score": 0.5})
    assert status == 200 and body["id"] == "x1"
    assert all(x["score"] >= 0.5 for x in body["labels"])


@pytest.mark.parametrize("payload,fragment", [
    ([1, 2], "JSON object"),
    ({"txt": "a"}, "unknown field 'txt'"),
    ({"text": 3}, '"text" must be a string'),
    ({"text": "a", "top_k": 25}, '"top_k" must be an integer from 0 to 24'),
    ({"text": "a", "top_k": True}, '"top_k"'),
    ({"text": "a", "min_score": 2}, '"min_score"'),
    ({"text": "a", "threshold": 0}, '"threshold" must be above 0'),
    ({"text": "a", "features": [1.0]}, "without side features"),
])
def test_bad_requests_are_json_400(server, payload, fragment):
    status, body = post(server, payload)
    assert status == 400 and fragment in body["error"]


def test_refusals_of_the_protocol_are_json(server):
    assert request(server, "POST", "/suggest", b"{not json")[0] == 400
    assert request(server, "GET", "/nope")[0] == 404
    assert request(server, "POST", "/health", b"{}")[0] == 404
    status, body = request(server, "PUT", "/suggest", b"{}")
    assert status == 501 and "error" in body
    big = json.dumps({"text": "word " * 1000}).encode()
    status, body = request(server, "POST", "/suggest", big)
    assert status == 413 and "at most 2,000" in body["error"]
    # No Content-Length: refused without reading.
    with socket.create_connection(server.server_address[:2], timeout=30) as sock:
        sock.sendall(b"POST /suggest HTTP/1.1\r\nHost: x\r\n\r\n")
        head = sock.recv(4096).decode()
    assert head.startswith("HTTP/1.1 411 ")


def test_a_client_that_stalls_is_cut_off(server):
    """A body shorter than its Content-Length: the read times out and the server closes the
    connection instead of waiting for ever; it still answers others."""
    with socket.create_connection(server.server_address[:2], timeout=30) as sock:
        sock.sendall(b"POST /suggest HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        data = sock.recv(4096)
    assert data == b"" or data.startswith(b"HTTP/1.1 4")
    assert request(server, "GET", "/health")[0] == 200


def test_the_command_serves_and_stops_on_sigterm(tiny_run):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "xmtc_cli", "serve", str(tiny_run.best),
                             "--port", "0", "--device", "cpu", "--threads", "2"],
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)
    try:
        line = proc.stderr.readline()
        assert "serving" in line and "http://127.0.0.1:" in line, line
        assert "CPU threads: 2 (--threads;" in line, line  # over the environment's 1
        port = int(line.split("http://127.0.0.1:")[1].split()[0])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("POST", "/suggest", body=json.dumps({"text": TEXTS[0], "top_k": 5}))
        response = conn.getresponse()
        body = json.loads(response.read())
        conn.close()
        assert response.status == 200 and len(body["labels"]) >= 5
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


class _Watch:
    """A LoadWatch stand-in: active, looks every `seconds`, asks for `counts` in turn, and
    records whether each look ran under the service's lock."""

    def __init__(self, counts: list[int], seconds: float):
        self.counts, self.seconds = list(counts), seconds
        self.active, self.others, self.cores = True, 0.7, 2
        self.service: SuggestService | None = None
        self.locked: list[bool] = []

    def poll(self) -> int | None:
        self.locked.append(self.service.lock.locked())
        return self.counts.pop(0) if self.counts else None


def _watched_server(tiny_run, watch: _Watch, notes: list[str]):
    predictor = Predictor.from_checkpoint(str(tiny_run.best), "cpu")
    counts = []  # torch's thread count inside each request's own thread
    predict = predictor.predict_texts
    predictor.predict_texts = lambda *a: counts.append(torch.get_num_threads()) or predict(*a)
    service = SuggestService(predictor, top_k=10, watch=watch, notice=notes.append)
    watch.service = service
    srv = SuggestServer(service, "127.0.0.1", 0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, service, counts


def test_serve_applies_the_count_the_load_asks_for_to_the_requests_after_it(tiny_run):
    """A count the watch asks for is applied under the lock that runs requests one at a time,
    told, and taken by every later request (each runs in a thread of its own); the answers
    stay the same."""
    watch, notes = _Watch([2, 1], seconds=3600.0), []
    srv, service, counts = _watched_server(tiny_run, watch, notes)
    try:
        answers = [post(srv, {"text": TEXTS[0]})]
        assert service.follow_load() == 2
        answers.append(post(srv, {"text": TEXTS[0]}))
        assert service.follow_load() == 1
        answers.append(post(srv, {"text": TEXTS[0]}))
        assert service.follow_load() is None  # nothing more asked: the count stays
    finally:
        srv.shutdown()
        srv.server_close()
    assert counts == [1, 2, 1] and watch.locked == [True, True, True]
    assert notes == ["CPU threads: 1 -> 2 (other processes kept 0.7 of 2 cores busy)",
                     "CPU threads: 2 -> 1 (other processes kept 0.7 of 2 cores busy)"]
    statuses, bodies = zip(*answers)
    assert statuses == (200, 200, 200)
    assert [[x["label"] for x in b["labels"]] for b in bodies] == \
        [[x["label"] for x in bodies[0]["labels"]]] * 3
    for body in bodies[1:]:
        assert [x["score"] for x in body["labels"]] == pytest.approx(
            [x["score"] for x in bodies[0]["labels"]], abs=1e-6)


def test_serve_looks_at_the_load_in_the_background_until_stopped(tiny_run):
    watch, notes = _Watch([2], seconds=0.01), []
    srv, service, _ = _watched_server(tiny_run, watch, notes)
    try:
        thread = service.watch_load()
        deadline = time.monotonic() + 30
        while len(watch.locked) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        service.stop()
        thread.join(timeout=30)
    finally:
        srv.shutdown()
        srv.server_close()
    assert not thread.is_alive() and len(watch.locked) >= 3 and all(watch.locked)
    assert notes == ["CPU threads: 1 -> 2 (other processes kept 0.7 of 2 cores busy)"]
    seen = []  # what the next request's thread would run with
    fresh = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    fresh.start()
    fresh.join()
    assert seen == [2]


def test_serve_without_a_watch_starts_no_thread(tiny_run):
    predictor = Predictor.from_checkpoint(str(tiny_run.best), "cpu")
    assert SuggestService(predictor).watch_load() is None
    inactive = _Watch([2], seconds=0.01)
    inactive.active = False
    assert SuggestService(predictor, watch=inactive).watch_load() is None
    assert SuggestService(predictor).follow_load() is None
