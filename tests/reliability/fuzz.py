"""Run schemathesis's engine in-process (every phase the schema allows) and gather the outcome.

The engine is what `schemathesis run` drives; here it calls the ASGI app directly, so the service
runs with its real lifespan (models loaded and warmed) and no socket is opened.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import schemathesis
from schemathesis.engine import Status, events, from_schema
from schemathesis.python import asgi

# What the issue asks of every response: no 5xx, documented status and media type, a body that
# matches its schema, and schema-violating input refused with a 4xx.
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
)


def config(max_examples: int, headers: dict[str, str], *, seed: int | None) -> schemathesis.Config:
    """Every phase, positive and negative data, `max_examples` per operation in fuzzing.

    No `max-time`: with one, the engine repeats fuzzing until the time is spent; `run` stops the
    engine at its own deadline instead.
    """
    doc: dict[str, Any] = {
        "headers": headers,
        "generation": {"mode": "all", "max-examples": max_examples, "database": "none"},
        "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}},
        "phases": {
            name: {"enabled": True} for name in ("examples", "coverage", "fuzzing", "stateful")
        },
    }
    if seed is not None:
        doc["seed"] = seed
    return schemathesis.Config.from_dict(doc)


@dataclass
class Outcome:
    """What one engine run did: requests per phase and operation, statuses, and every problem."""

    requests: Counter[str] = field(default_factory=Counter)  # "phase OPERATION" -> count
    statuses: Counter[int] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    phases: dict[str, str] = field(default_factory=dict)  # phase -> status or skip reason
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.requests.values())

    def report(self) -> str:
        lines = [f"{self.total} requests in {self.seconds:.1f} s; phases {self.phases}"]
        lines += [f"  {key}: {count}" for key, count in sorted(self.requests.items())]
        lines.append(f"  statuses: {dict(sorted(self.statuses.items()))}")
        return "\n".join(lines + self.problems)


def run(app: Any, cfg: schemathesis.Config, deadline_s: float, **include: Any) -> Outcome:
    """Run every enabled phase on the operations of the app's /openapi.json that `include`
    selects (schemathesis filters: method, path, tag...), for at most `deadline_s` (then the
    engine is told to stop, which counts as a problem)."""
    outcome = Outcome()
    started = time.monotonic()
    try:
        schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=cfg)
        stream = from_schema(schema.include(**include) if include else schema).execute()
        for event in stream:
            _record(event, outcome)
            if time.monotonic() - started > deadline_s and not stream.stop_event.is_set():
                outcome.problems.append(f"[deadline] stopped after {deadline_s:.0f} s")
                stream.stop()
    finally:
        asgi.shutdown_lifespans()
    return outcome


def _record(event: events.EngineEvent, outcome: Outcome) -> None:
    if isinstance(event, events.PhaseFinished):
        outcome.phases[event.phase.name.value] = event.status.value
    elif isinstance(event, events.PhaseStarted) and event.phase.skip_reason is not None:
        outcome.phases[event.phase.name.value] = f"skipped: {event.phase.skip_reason.value}"
    elif isinstance(event, events.ScenarioFinished):
        recorder = event.recorder
        for interaction in recorder.interactions.values():
            outcome.requests[f"{event.phase.value} {recorder.label}"] += 1
            if interaction.response is not None:
                outcome.statuses[interaction.response.status_code] += 1
        for case_id, checks in recorder.checks.items():
            for check in checks:
                if check.status is Status.SUCCESS or check.failure_info is None:
                    continue
                failure = check.failure_info.failure
                node = recorder.cases.get(case_id)
                curl = node.value.as_curl_command() if node is not None else "?"
                outcome.problems.append(
                    f"[{event.phase.value}] {recorder.label} {check.name}: "
                    f"{failure.title}: {failure.message}\n    {curl[:2000]}"
                )
    elif isinstance(event, events.NonFatalError):
        outcome.problems.append(f"[error] {event.label}: {event.info.format()}")
    elif isinstance(event, events.FatalError):
        outcome.problems.append(f"[fatal] {event.exception!r}")
    elif isinstance(event, events.EngineFinished):
        outcome.seconds = event.running_time
        outcome.problems += [f"[after run] {f.title}: {f.message}" for f in event.failures]
