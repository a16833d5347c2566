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
from pathlib import Path

import pytest

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
