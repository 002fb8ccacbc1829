"""`order-pipeline alerts`: the ledger as the command lists it, at a pinned time, and as the demo tells to run it."""

from __future__ import annotations

import shlex

from click.testing import CliRunner
from helpers import NOW, H, M, alerting_for, paid_order, publish_rows, tick, write_config

from order_pipeline.cli import _demo_next_steps, main
from order_pipeline.contract.config import load_config


def test_alerts_says_how_long_each_has_been_open_at_the_given_now(tmp_path, warehouse_url, engine):
    publish_rows(engine, [paid_order()])
    tick(*alerting_for(tmp_path, engine), NOW)
    path = str(write_config(tmp_path, warehouse_url))
    later = NOW + 3 * H + 15 * M
    for now in (later.isoformat(), "2026-11-25T13:15:00"):  # a naive time is in the business zone
        result = CliRunner().invoke(main, ["alerts", "--config", path, "--now", now])
        assert result.exit_code == 0, result.output
        assert "SO-1: open 3小时15分, notified 11-25 10:00" in result.output

    result = CliRunner().invoke(main, ["alerts", "--config", path, "--now", "yesterday"])
    assert result.exit_code == 2 and "'yesterday' is not a time" in result.output
    assert "Traceback" not in result.output


def test_the_alerts_command_the_demo_prints_lists_them_at_the_demos_time(tmp_path, warehouse_url, engine):
    publish_rows(engine, [paid_order()])
    tick(*alerting_for(tmp_path, engine), NOW)  # the demo pinned to NOW, a week before the wall clock
    config = load_config(write_config(tmp_path, warehouse_url))
    steps = _demo_next_steps(config, NOW).splitlines()
    command = next(line for line in steps if line.startswith("Open alerts:")).split(":", 1)[1]
    program, *args = shlex.split(command)
    assert program == "order-pipeline"
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "SO-1: open 不到1分钟, notified 11-25 10:00" in result.output
