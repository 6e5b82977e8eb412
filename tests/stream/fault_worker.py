"""The guardian worker with faults injected, for tests/stream/test_faults.py.

`python -m tests.stream.fault_worker worker` runs what `python -m stream.cli worker` runs
(the same settings, app, real Kafka and Redis) on the tiny guardian, wrapped so that:

- FAULT_FAIL_CALLS=N: the first N backend calls raise (a transient model failure);
- FAULT_FAIL_TEXT=S: every backend call with a query whose text contains S raises (a query
  the model always fails on);
- FAULT_FAIL_SENDS=verdict:5,dlq:1: the 5th send to the verdicts topic and the 1st to the DLQ
  fail as sends the broker never acknowledged (nothing is written, the send's future
  raises), so the batch fails after some of its outputs were acknowledged.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from model.backends.hf import TransformersBackend

TOPIC_ATTRS = {"verdict": "t_verdicts", "response": "t_responses", "flagged": "t_flagged",
               "dlq": "t_dlq"}


class FlakyBackend(TransformersBackend):
    """The transformers backend, failing on the first `fail_calls` calls and on any call that
    holds a query containing `fail_text`."""

    fail_calls = 0
    fail_text = ""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls = 0

    def _maybe_fail(self, queries) -> None:
        self.calls += 1
        if self.calls <= self.fail_calls:
            raise RuntimeError(f"injected failure: call {self.calls} of the first "
                               f"{self.fail_calls}")
        if self.fail_text and any(self.fail_text in q.text for q in queries):
            raise RuntimeError(f"injected failure on {self.fail_text!r}")

    def decide(self, queries, policy):
        self._maybe_fail(queries)
        return super().decide(queries, policy)

    def judge(self, queries, policy):
        self._maybe_fail(queries)
        return super().judge(queries, policy)


class FailingSends:
    """A Faust topic whose sends number `fail_at` (1-based) are never acknowledged."""

    def __init__(self, topic, fail_at: set[int]) -> None:
        self.topic = topic
        self.fail_at = set(fail_at)
        self.count = 0

    async def send(self, **kwargs):
        self.count += 1
        if self.count in self.fail_at:
            from aiokafka.errors import KafkaTimeoutError

            fut = asyncio.get_running_loop().create_future()
            fut.set_exception(KafkaTimeoutError(f"injected: send {self.count} not acknowledged"))
            return fut
        return await self.topic.send(**kwargs)

    def __getattr__(self, name):
        return getattr(self.topic, name)


def parse_fail_sends(spec: str) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {}
    for item in filter(None, (p.strip() for p in spec.split(","))):
        kind, _, n = item.partition(":")
        if kind not in TOPIC_ATTRS:
            raise SystemExit(f"FAULT_FAIL_SENDS: unknown output {kind!r}")
        out.setdefault(kind, set()).add(int(n))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["worker"])
    parser.add_argument("--loglevel", default="warning")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    import faust

    from model.settings import GuardianSettings
    from stream.app import create_app, ensure_topics

    settings = GuardianSettings()
    asyncio.run(ensure_topics(settings))
    backend = FlakyBackend.from_settings(settings)
    backend.fail_calls = int(os.environ.get("FAULT_FAIL_CALLS") or 0)
    backend.fail_text = os.environ.get("FAULT_FAIL_TEXT", "")
    app = create_app(settings, backend=backend)
    pipeline = app.guardian_pipeline
    for kind, fail_at in parse_fail_sends(os.environ.get("FAULT_FAIL_SENDS", "")).items():
        attr = TOPIC_ATTRS[kind]
        setattr(pipeline, attr, FailingSends(getattr(pipeline, attr), fail_at))
    faust.Worker(app, loglevel=args.loglevel).execute_from_commandline()
    return 0


if __name__ == "__main__":
    sys.exit(main())
