"""``jobs.bench.memory.run_probe``: a probe runs in a fresh process, in the environment given."""

from __future__ import annotations

import multiprocessing
import os
import time

import pytest

from jobs.bench.memory import run_probe


def process_facts(tag: str) -> dict:
    """A probe: where it ran and what it saw (module level: the spawned process imports it)."""
    return {"pid": os.getpid(), "tag": tag, "env": os.environ.get("OSCAR_PROBE_TEST")}


def slow(seconds: float) -> dict:
    time.sleep(seconds)
    return {}


def failing() -> dict:
    raise ValueError("probe failed on purpose")


def test_probe_runs_in_another_process_with_the_environment_given():
    env = {**os.environ, "OSCAR_PROBE_TEST": "yes"}
    facts = run_probe(process_facts, {"tag": "a"}, env)
    assert facts["pid"] != os.getpid() and facts["tag"] == "a" and facts["env"] == "yes"
    assert "OSCAR_PROBE_TEST" not in os.environ  # the caller's environment is back
    assert run_probe(process_facts, {"tag": "b"})["env"] is None


def test_probe_errors_and_time_outs_reach_the_caller():
    with pytest.raises(ValueError, match="on purpose"):
        run_probe(failing, {})
    with pytest.raises(multiprocessing.TimeoutError):
        run_probe(slow, {"seconds": 30}, timeout=1)
