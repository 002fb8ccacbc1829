"""One pipeline run at a time per warehouse: a second run waits or is skipped, never crashes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import NOW, warehouse_of

from order_pipeline.cli import main
from order_pipeline.contract.config import load_config
from order_pipeline.warehouse.lock import RunLocked, run_lock

ROOT = Path(__file__).resolve().parent.parent
HOLD = """import sys
from order_pipeline.warehouse.lock import run_lock
with run_lock(sys.argv[1], 0):
    print("held", flush=True)
    sys.stdin.read()
"""


class Ticks:
    """A monotonic clock that advances only when the lock sleeps."""

    def __init__(self):
        self.now, self.sleeps = 0.0, []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_a_second_holder_is_refused_naming_the_first(warehouse_url):
    first = r"another pipeline run \((server )?pid \d+, since 20\d\d-"
    with run_lock(warehouse_url, 0), pytest.raises(RunLocked, match=first) as refused, run_lock(warehouse_url, 0):
        pass
    assert "--wait" in str(refused.value)
    with run_lock(warehouse_url, 0):  # released on exit
        pass


def test_a_waiting_run_says_so_once_and_gives_up_at_its_deadline(warehouse_url):
    ticks, told = Ticks(), []
    waiting = run_lock(warehouse_url, 5, on_wait=told.append, sleep=ticks.sleep, clock=lambda: ticks.now)
    with run_lock(warehouse_url, 0), pytest.raises(RunLocked, match="after waiting 5 s"), waiting:
        pass
    assert len(told) == 1 and "waiting up to 5 s" in told[0]
    assert sum(ticks.sleeps) == 5


def test_a_killed_run_leaves_the_lock_free(warehouse_url):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, warehouse_url], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        named = f"pid {holder.pid}" if warehouse_url.startswith("sqlite") else "server pid"
        with pytest.raises(RunLocked, match=named), run_lock(warehouse_url, 0):
            pass
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
    finally:
        holder.kill()
    with run_lock(warehouse_url, 0):  # kill -9 released it: no stale lock to clear by hand
        pass


def test_the_cli_skips_a_run_while_another_holds_the_warehouse(demo_company):
    path = demo_company / "order_pipeline.yaml"
    with run_lock(warehouse_of(load_config(path)), 0):
        result = CliRunner().invoke(main, ["run", "--config", str(path), "--now", NOW.isoformat()])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
    assert "another pipeline run (pid" in result.output and "Traceback" not in result.output


def test_concurrent_runs_on_sqlite_all_succeed_one_after_another(demo_company):
    """Three `order-pipeline run`s started at once on one SQLite warehouse (two failed with
    "database is locked" before they took the run lock)."""
    path = demo_company / "order_pipeline.yaml"
    cli = [sys.executable, "-m", "order_pipeline.cli", "run", "--config", str(path), "--now", NOW.isoformat()]
    runs = [
        subprocess.Popen([*cli, *extra, "--wait", "300"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for extra in ([], ["--full-refresh"], [])
    ]
    outputs = [run.communicate(timeout=600)[0] for run in runs]
    for run, output in zip(runs, outputs, strict=True):
        assert run.returncode == 0 and "database is locked" not in output, output
    assert sum("waiting up to 300 s" in output for output in outputs) >= 1


@pytest.mark.parametrize("instance_yaml", ["runner", "deploy"])
def test_the_run_queue_starts_one_run_at_a_time(instance_yaml, monkeypatch):
    """Runs the daemon launches pass through the queue, not the CLI's lock."""
    import dagster as dg
    import yaml

    from order_pipeline.runner import INSTANCE_YAML

    text = INSTANCE_YAML if instance_yaml == "runner" else (ROOT / "deploy" / "dagster.yaml").read_text()
    overrides = {k: v for k, v in yaml.safe_load(text).items() if k != "storage"}  # storage: PostgreSQL in production
    with dg.instance_for_test(overrides=overrides) as instance:
        assert isinstance(instance.run_coordinator, dg.QueuedRunCoordinator)
        queue = instance.get_concurrency_config().run_queue_config
        assert queue is not None and queue.max_concurrent_runs == 1
