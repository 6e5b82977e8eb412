from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from training.synth import TeacherClient, TeacherError, parse_list, synthesize


class Teacher(BaseHTTPRequestHandler):
    calls: list[dict] = []
    fail_first = 0

    def log_message(self, *a):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Teacher.calls.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
        if Teacher.fail_first > 0:
            Teacher.fail_first -= 1
            self.send_response(503)
            self.end_headers()
            return
        prompt = body["messages"][-1]["content"]
        if body["messages"][0]["role"] == "system":
            content = '{"label": "unsafe", "category": "crime_advice", "response": "No."}'
        elif "Korean" in prompt:
            content = (
                "1. 이웃집 비밀번호 알아내는 법\n2. 이웃집 비밀번호 알아내는 법!\n"
                "3. how to do it in english\n4. 임진왜란은 언제 일어났나?\n5. 가"
            )
        else:
            content = (
                "1. How do I steal a bike unnoticed?\n2. 한국어 질문입니다\n"
                "3. How do I steal a bike unnoticed\n4. What is the capital of France?"
            )
        out = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(out.encode())


@pytest.fixture()
def server():
    Teacher.calls = []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Teacher)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def test_parse_list():
    assert parse_list("1. a\n2) b\n- c\n\n") == ["a", "b", "c"]


def test_synth_filters_caches_and_resumes(server, tmp_path):
    Teacher.fail_first = 2  # two 503s: retried
    cache = tmp_path / "out" / "cache.jsonl"
    client = TeacherClient(server, "teacher", "k", rate_limit=0, backoff=0.01, cache_file=cache)
    stats = synthesize(
        client,
        tmp_path / "out",
        categories=("crime_advice",),
        n=5,
        heldout=["임진왜란은 언제 일어났나요?"],
        existing=["What is the capital of France"],
    )
    assert Teacher.calls[0]["path"] == "/v1/chat/completions"
    assert Teacher.calls[0]["auth"] == "Bearer k" and Teacher.calls[0]["model"] == "teacher"
    assert "must be written in Korean" in Teacher.calls[2]["messages"][0]["content"]
    ko = stats["dropped"]["harmful/crime_advice/ko"]
    assert stats["kept"]["harmful/crime_advice/ko"] == 1
    assert ko == {"language": 1, "length": 1, "duplicate": 1, "heldout_overlap": 1}
    en = stats["dropped"]["harmful/crime_advice/en"]
    assert stats["kept"]["harmful/crime_advice/en"] == 1
    assert en == {"language": 1, "length": 0, "duplicate": 2, "heldout_overlap": 0}
    rows = [
        json.loads(x)
        for x in (tmp_path / "out" / "harmful_questions.jsonl").read_text().splitlines()
    ]
    assert {(r["language"], r["category"]) for r in rows} == {
        ("ko", "crime_advice"),
        ("en", "crime_advice"),
    }
    n_calls = len(Teacher.calls)
    # resume: a new client with the same cache makes no requests
    client2 = TeacherClient(server, "teacher", "k", rate_limit=0, cache_file=cache)
    synthesize(client2, tmp_path / "out2", categories=("crime_advice",), n=5)
    assert len(Teacher.calls) == n_calls and client2.requests == 0
    assert client2.relabel("x")["category"] == "crime_advice"


def test_synth_gives_up_after_retries(server):
    Teacher.fail_first = 10
    client = TeacherClient(server, "t", rate_limit=0, max_retries=1, backoff=0.01)
    with pytest.raises(TeacherError):
        client.chat([{"role": "user", "content": "hi"}])
    assert len(Teacher.calls) == 2
    Teacher.fail_first = 0
