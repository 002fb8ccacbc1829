"""Loading the code location touches no outside system; `order-pipeline check` reports each one."""

from __future__ import annotations

import dataclasses
import re
import socket
import sqlite3

import dagster as dg
import pytest
import yaml
from click.testing import CliRunner
from helpers import NOW, copy_company

from order_pipeline import definitions
from order_pipeline.cli import main
from order_pipeline.contract.config import CONFIG_ENV, Secret, load_config
from order_pipeline.definitions import build_definitions
from order_pipeline.reachability import callback_host_problem, check_all


def write(config_path, doc) -> None:
    config_path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")


def report(output: str) -> dict[str, str]:
    """`order-pipeline check` output by part: 'source orders' -> 'FAIL <reason>'."""
    parts = {}
    for line in output.splitlines():
        m = re.match(r"^  (ok|FAIL)\s+(.{28}) (.*)$", line)
        if m:
            parts[m.group(2).strip()] = f"{m.group(1)} {m.group(3)}"
    return parts


def unreachable_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def broken(demo_company, monkeypatch):
    """The demo with an ERP server that is down, a payments URL in an unset variable and a WMS table renamed."""
    path = demo_company / "order_pipeline.yaml"
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    doc["sources"]["orders"]["url"] = f"postgresql+psycopg2://erp@127.0.0.1:{unreachable_port()}/erp"
    doc["sources"]["payments"].pop("url")
    doc["sources"]["payments"]["url_env"] = "FINANCE_DATABASE_URL"
    doc["sources"]["shipments"]["table"] = "no_such_table"
    doc.setdefault("channels", {})["wecom_warehouse"] = {"type": "wecom", "webhook_url_env": "WECOM_WAREHOUSE_URL"}
    write(path, doc)
    monkeypatch.delenv("FINANCE_DATABASE_URL", raising=False)
    monkeypatch.delenv("WECOM_WAREHOUSE_URL", raising=False)
    return path


def test_definitions_load_while_sources_are_down_and_secrets_unset(broken, monkeypatch):
    monkeypatch.setenv(CONFIG_ENV, str(broken))
    defs = definitions.defs()
    dg.Definitions.validate_loadable(defs)
    assert {"source_changes", "alert_dispatch"} <= {s.name for s in defs.get_repository_def().sensor_defs}


def test_check_reports_each_part_and_fails_when_one_is_unreachable(broken):
    result = CliRunner().invoke(main, ["check", "--config", str(broken)])
    assert result.exit_code == 1, result.output
    lines = report(result.output)
    assert lines["source orders"].startswith("FAIL") and "cannot reach the database" in lines["source orders"]
    assert "FINANCE_DATABASE_URL is not set" in lines["source payments"]
    assert "no_such_table" in lines["source shipments"] and "sources.shipments" in lines["source shipments"]
    assert lines["source inventory"].startswith("ok") and "columns readable" in lines["source inventory"]
    assert lines["warehouse"].startswith("ok")
    assert lines["carrier"].startswith("ok") and "stand-in" in lines["carrier"]
    assert lines["channel wecom_warehouse"].startswith("FAIL")
    assert "WECOM_WAREHOUSE_URL is not set" in lines["channel wecom_warehouse"]
    assert "4 part(s) cannot be reached" in result.output


def test_check_passes_on_the_demo(demo_company):
    result = CliRunner().invoke(main, ["check", "--config", str(demo_company / "order_pipeline.yaml")])
    assert result.exit_code == 0, result.output
    assert "FAIL" not in result.output and result.output.count("  ok  ") >= 8
    assert "WARN" not in result.output  # the demo's password on this machine only is what it is for


def test_a_failing_source_fails_only_its_own_asset_with_the_config_error(broken):
    from order_pipeline.runner import run_pipeline

    config = load_config(broken)
    with dg.instance_for_test() as instance:
        outcome = run_pipeline(config, instance, now=NOW.isoformat(), full_refresh=True)
    assert not outcome.success
    failed = {f.split(":")[0] for f in outcome.failures}
    assert {"raw_orders", "raw_payments", "raw_shipments"} <= failed
    assert "raw_inventory" not in failed and "raw_reservations" not in failed
    shipments = next(f for f in outcome.failures if f.startswith("raw_shipments"))
    assert "sources.shipments" in shipments and "Fix:" in shipments


def test_without_any_config_the_project_root_loads_the_demo(demo_company, tmp_path, monkeypatch, caplog):
    root = tmp_path / "root"
    config = copy_company(demo_company, root / "data" / "demo") / "order_pipeline.yaml"
    monkeypatch.chdir(root)
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    with caplog.at_level("INFO"):
        defs = definitions.defs()
    dg.Definitions.validate_loadable(defs)
    assert "no config given: loading the demo's" in caplog.text and str(config) in caplog.text
    assert build_definitions(load_config()).get_repository_def().has_job("order_pipeline")


def test_check_connects_to_a_channel_without_sending_to_it(demo_company, monkeypatch):
    """A robot's host that accepts connections is ok, one that refuses is failing; nothing is posted."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    path = demo_company / "order_pipeline.yaml"
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    doc.setdefault("channels", {}).update(
        {
            "up": {"type": "wecom", "webhook_url_env": "ROBOT_UP"},
            "down": {"type": "slack", "webhook_url_env": "ROBOT_DOWN"},
        }
    )
    write(path, doc)
    monkeypatch.setenv("ROBOT_UP", f"http://127.0.0.1:{listener.getsockname()[1]}/cgi-bin/webhook/send?key=k")
    monkeypatch.setenv("ROBOT_DOWN", f"http://127.0.0.1:{unreachable_port()}/services/T/B/x")
    try:
        result = CliRunner().invoke(main, ["check", "--config", str(path)])
        listener.settimeout(1)
        accepted, _ = listener.accept()  # the check's connection, already closed by it
        with accepted:
            accepted.settimeout(1)
            assert accepted.recv(1024) == b""  # it sent nothing
    finally:
        listener.close()
    lines = report(result.output)
    assert lines["channel up"].startswith("ok") and "accepts connections" in lines["channel up"]
    assert lines["channel down"].startswith("FAIL") and "refused" in lines["channel down"].lower()
    assert result.exit_code == 1


@pytest.mark.parametrize(
    ("section", "value", "entry"),
    [
        ("rules", {"paid_not_locked": {"when": {"paid_at": {"older_than_ish": "2h"}}}}, "rules.paid_not_locked"),
        ("alerts", {"cooldwon": "2h"}, "alerts.cooldwon"),
        ("channels", {"ops": {"type": "wechat"}}, "channels.ops.type"),
    ],
)
def test_a_mistake_in_any_section_is_one_message_from_the_cli(demo_company, section, value, entry):
    path = demo_company / "order_pipeline.yaml"
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    doc[section] = {**(doc.get(section) or {}), **value}
    write(path, doc)
    result = CliRunner().invoke(main, ["run", "--config", str(path)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output and entry in result.output and "Fix:" in result.output


def test_a_source_locked_past_its_busy_timeout_fails_only_its_own_step(demo_company, monkeypatch):
    from order_pipeline.runner import run_pipeline
    from order_pipeline.sources import engines

    monkeypatch.setattr(engines, "SQLITE_BUSY_SECONDS", 0.2)
    engines.dispose_all()
    config = load_config(demo_company / "order_pipeline.yaml")
    finance = sqlite3.connect((config.sources["payments"].url.resolve() or "").removeprefix("sqlite:///"))
    finance.execute("BEGIN EXCLUSIVE")  # the finance system holds its database
    try:
        with dg.instance_for_test() as instance:
            outcome = run_pipeline(config, instance, now=NOW.isoformat(), full_refresh=True)
    finally:
        finance.rollback()
        finance.close()
        engines.dispose_all()
    failed = {f.split(":")[0]: f for f in outcome.failures}
    assert set(failed) == {"raw_payments"}, outcome.failures
    assert "sources.payments.url" in failed["raw_payments"] and "locked" in failed["raw_payments"]
    assert {"raw_orders", "raw_inventory", "raw_shipments"} <= set(outcome.step_seconds)


def test_an_unreachable_warehouse_is_one_message_naming_its_entry(demo_company, monkeypatch):
    path = demo_company / "order_pipeline.yaml"
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    doc["warehouse"] = {"url_env": "ORDER_PIPELINE_TEST_WAREHOUSE"}
    write(path, doc)
    monkeypatch.setenv("ORDER_PIPELINE_TEST_WAREHOUSE", "postgresql://postgres:secret@127.0.0.1:1/nowhere")
    result = CliRunner().invoke(main, ["run", "--config", str(path)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output and "secret" not in result.output
    assert 'cannot be reached: connection to server at "127.0.0.1", port 1 failed' in result.output
    assert f"correct {path}: warehouse.url_env (ORDER_PIPELINE_TEST_WAREHOUSE)" in result.output

    from order_pipeline.runner import run_pipeline

    with dg.instance_for_test() as instance:  # a run the daemon starts: each step says the same
        outcome = run_pipeline(load_config(path), instance, now=NOW.isoformat())
    assert not outcome.success and outcome.failures
    assert all("warehouse.url_env (ORDER_PIPELINE_TEST_WAREHOUSE)" in f for f in outcome.failures), outcome.failures


def test_ui_starts_this_environments_dagster_without_it_on_path(demo_company, monkeypatch, tmp_path):
    """`.venv/bin/order-pipeline ui` from a shell whose PATH lacks .venv/bin."""
    import os
    import subprocess
    import sys

    started: list[list[str]] = []
    monkeypatch.setattr(os, "execv", lambda path, args: started.append([path, *args[1:]]))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    result = CliRunner().invoke(main, ["ui", "--config", str(demo_company / "order_pipeline.yaml"), "--port", "3999"])
    assert result.exit_code == 0, result.output
    (command,) = started
    assert command[:5] == [sys.executable, "-m", "dagster", "dev", "-p"] and "3999" in command
    bare = {k: v for k, v in os.environ.items() if k != "PATH"} | {"PATH": "/usr/bin:/bin"}
    version = subprocess.run([*command[:3], "--version"], env=bare, capture_output=True, text=True, timeout=120)
    assert version.returncode == 0 and "1.13" in version.stdout, version.stderr


def test_ui_that_cannot_start_is_one_message(demo_company, monkeypatch, tmp_path):
    import os

    def missing(path, args):
        raise FileNotFoundError(2, "No such file or directory")

    monkeypatch.setattr(os, "execv", missing)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    result = CliRunner().invoke(main, ["ui", "--config", str(demo_company / "order_pipeline.yaml")])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert "could not start dagster dev" in result.output and "Traceback" not in result.output


def test_check_warns_of_the_demo_password_served_beyond_this_machine(demo_company):
    path = demo_company / "order_pipeline.yaml"
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    doc["web"]["base_url"] = "https://track.example.com"
    write(path, doc)
    result = CliRunner().invoke(main, ["check", "--config", str(path)])
    assert result.exit_code == 0, result.output
    warned = [line for line in result.output.splitlines() if line.startswith("  WARN")]
    assert any("web.staff" in line and "'ops'" in line and "demo" in line for line in warned), result.output
    assert any("session_secret" in line for line in warned), result.output


@pytest.mark.parametrize(
    "host, addresses, problem",
    [
        ("track.example.com", ["93.184.216.34"], None),
        ("track.example.com", ["10.0.0.5", "93.184.216.34"], None),  # one public address is enough
        ("track.example.com", ["10.0.0.5"], "resolves only to private address 10.0.0.5"),
        ("track.example.com", [], "does not resolve"),
        ("localhost", ["127.0.0.1"], "names a local host"),
        ("pipeline.internal", ["10.1.2.3"], "names a local host"),
        ("pipeline", ["10.1.2.3"], "is a single-label name, which only resolves inside this network"),
        ("192.168.1.20", [], "is a private address"),
        ("127.0.0.1", [], "is a private address"),
        ("93.184.216.34", [], None),
    ],
)
def test_a_callback_host_kuaidi100_cannot_reach_is_named(host, addresses, problem):
    assert callback_host_problem(host, addresses) == problem


def test_check_says_whether_kuaidi100_can_push_to_the_callback_url(demo_company, monkeypatch):
    path = demo_company / "order_pipeline.yaml"
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    doc["carrier"]["callback_url"] = "https://127.0.0.1:8080/push"
    write(path, doc)
    result = CliRunner().invoke(main, ["check", "--config", str(path)])
    (line,) = [line for line in result.output.splitlines() if "carrier callback" in line]
    # The loopback stand-in pushes to a loopback address; the notes still say what a real account needs.
    assert line.startswith("  ok") and "the loopback stand-in pushes here" in line, result.output
    assert "Kuaidi100 pushes plain http" in line and "/hooks/kuaidi100" in line

    config = dataclasses.replace(
        load_config(path),
        carrier=dataclasses.replace(
            load_config(path).carrier, endpoint="https://poll.kuaidi100.com/poll/query.do", push_salt=Secret(value="s")
        ),
    )
    (reach,) = [r for r in check_all(config) if r.part == "carrier callback"]
    assert not reach.ok and "is a private address: Kuaidi100 cannot push to it" in reach.detail
    assert "carrier.callback_url" in reach.detail and "Receiving pushes" in reach.detail


def test_check_names_a_customer_channel_whose_secret_is_unset_and_connects_to_the_others(demo_company, monkeypatch):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    path = demo_company / "order_pipeline.yaml"
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    doc["notifications"]["channels"] |= {
        "sms": {
            "type": "aliyun_sms",
            "access_key_id_env": "CHECK_ALIYUN_ID",
            "access_key_secret_env": "CHECK_ALIYUN_SECRET",
            "sign_name": "示例商城",
            "endpoint": f"http://127.0.0.1:{listener.getsockname()[1]}",
        },
        "wechat": {"type": "wechat", "app_id": "wx0000000000000001", "app_secret_env": "CHECK_WECHAT_SECRET"},
    }
    doc["notifications"]["send"] = ["outbox"]  # the events' messages stay in the outbox: no template needed
    write(path, doc)
    monkeypatch.setenv("CHECK_ALIYUN_ID", "id")
    monkeypatch.setenv("CHECK_ALIYUN_SECRET", "secret")
    monkeypatch.delenv("CHECK_WECHAT_SECRET", raising=False)
    try:
        result = CliRunner().invoke(main, ["check", "--config", str(path)])
    finally:
        listener.close()
    lines = report(result.output)
    assert lines["customer channel outbox"].startswith("ok") and "customer_outbox" in lines["customer channel outbox"]
    assert lines["customer channel sms"].startswith("ok") and "accepts connections" in lines["customer channel sms"]
    wechat = lines["customer channel wechat"]
    assert wechat.startswith("FAIL") and "notifications.channels.wechat.app_secret_env" in wechat
    assert "CHECK_WECHAT_SECRET is not set" in wechat and result.exit_code != 0
