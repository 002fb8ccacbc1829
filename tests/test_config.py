"""Config mistakes fail at load time, naming the file, the entry and the fix.

What only the source itself can tell (is it there, does it have the mapped columns, is the
variable with its URL set) is not asked at load time: `check_source` asks it, for
`order-pipeline check` and for each source's run, in the same terms.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import dagster as dg
import pytest
import yaml
from helpers import write_sources

from order_pipeline.contract.config import ConfigError, load_config
from order_pipeline.contract.parsing import parse_duration
from order_pipeline.definitions import build_definitions
from order_pipeline.sources.checks import check_source


@pytest.fixture
def doc(tmp_path):
    return write_sources(tmp_path)


def load(tmp_path: Path, doc: dict):
    path = tmp_path / "order_pipeline.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    return load_config(path)


def unreachable(tmp_path: Path, doc: dict, source: str) -> ConfigError:
    """Loading succeeds without touching the source; checking it fails, naming the file, entry and fix."""
    config = load(tmp_path, doc)
    with pytest.raises(ConfigError) as info:
        check_source(config.path, config.sources[source])
    assert str(tmp_path / "order_pipeline.yaml") in str(info.value)
    return info.value


def error(tmp_path: Path, doc: dict) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, doc)
    assert str(tmp_path / "order_pipeline.yaml") in str(info.value)
    return info.value


def test_a_valid_config_loads_with_relative_paths_resolved(tmp_path, doc):
    config = load(tmp_path, doc)
    assert config.sources["orders"].url.resolve() == f"sqlite:///{tmp_path / 'orders.db'}"
    assert config.warehouse_url.resolve() == f"sqlite:///{tmp_path / 'data' / 'warehouse.db'}"
    assert config.carrier.poll_interval == timedelta(hours=2)
    assert config.reconcile_every == timedelta(hours=1)


def test_polling_stops_after_the_configured_failures_in_a_row(tmp_path, doc):
    assert load(tmp_path, doc).carrier.max_consecutive_failures == 5
    doc["carrier"] = {"max_consecutive_failures": 2}
    config = load(tmp_path, doc)
    assert config.carrier.max_consecutive_failures == 2
    tracking = build_definitions(config).get_repository_def().asset_graph.get(dg.AssetKey("raw_tracking"))
    assert "stops after 2 failures in a row" in (tracking.description or "")
    doc["carrier"] = {"max_consecutive_failures": "five"}
    e = error(tmp_path, doc)
    assert e.entry == "carrier.max_consecutive_failures" and "number" in e.fix


def test_unknown_canonical_column(tmp_path, doc):
    doc["sources"]["orders"]["columns"]["order_number"] = "order_no"
    e = error(tmp_path, doc)
    assert e.entry == "sources.orders.columns.order_number"
    assert "unknown setting" in e.problem and "customer_phone" in e.fix


def test_missing_required_mapping(tmp_path, doc):
    del doc["sources"]["payments"]["columns"]["paid_at"]
    e = error(tmp_path, doc)
    assert e.entry == "sources.payments.columns.paid_at"
    assert "paid_at: <the source's column name>" in e.fix


def test_mapping_to_a_column_the_source_lacks(tmp_path, doc):
    doc["sources"]["orders"]["columns"]["order_no"] = "FBillNo"
    e = unreachable(tmp_path, doc, "orders")
    assert e.entry == "sources.orders.columns.order_no" and "'FBillNo'" in e.problem
    assert "order_no" in e.fix  # lists what the source does have


def test_missing_database_file(tmp_path, doc):
    doc["sources"]["shipments"]["url"] = "sqlite:///nowhere/wms.db"
    e = unreachable(tmp_path, doc, "shipments")
    assert e.entry == "sources.shipments.url" and "does not exist" in e.problem


def test_unreachable_database_server(tmp_path, doc):
    doc["sources"]["payments"]["url"] = "postgresql+psycopg2://postgres@127.0.0.1:1/finance"
    e = unreachable(tmp_path, doc, "payments")
    assert e.entry == "sources.payments.url" and "cannot reach" in e.problem and "server is up" in e.fix


def test_unknown_table(tmp_path, doc):
    doc["sources"]["inventory"]["table"] = "stock"
    e = unreachable(tmp_path, doc, "inventory")
    assert e.entry.startswith("sources.inventory") and "stock" in e.problem


@pytest.mark.parametrize("value", ["2 hours", "h", "-1h", "10x", ""])
def test_bad_duration(tmp_path, doc, value):
    doc["carrier"] = {"poll_interval": value}
    e = error(tmp_path, doc)
    assert e.entry == "carrier.poll_interval" and "90s, 30m, 2h, 1d" in e.fix


def test_the_reconciliation_cadence_is_a_duration(tmp_path, doc):
    doc["pipeline"] = {"reconcile_every": "6h"}
    assert load(tmp_path, doc).reconcile_every == timedelta(hours=6)
    doc["pipeline"] = {"reconcile_every": 6}
    e = error(tmp_path, doc)
    assert e.entry == "pipeline.reconcile_every" and "2h" in e.fix


@pytest.mark.parametrize(
    "text, expected",
    [
        ("90s", timedelta(seconds=90)),
        ("30m", timedelta(minutes=30)),
        ("2h", timedelta(hours=2)),
        ("48h", timedelta(hours=48)),
        ("1d", timedelta(days=1)),
        ("1.5h", timedelta(minutes=90)),
    ],
)
def test_durations(text, expected):
    assert parse_duration(text) == expected


def test_missing_required_source(tmp_path, doc):
    del doc["sources"]["reservations"]
    e = error(tmp_path, doc)
    assert e.entry == "sources.reservations" and "add `reservations:`" in e.fix


@pytest.mark.parametrize("name", ["key", "push_salt"])
def test_secret_in_the_file_is_refused(tmp_path, doc, name):
    doc["carrier"] = {name: "abc123"}
    e = error(tmp_path, doc)
    assert e.entry == f"carrier.{name}" and f"{name}_env" in e.fix


def test_the_callback_url_is_read(tmp_path, doc):
    doc["carrier"] = {"callback_url": "http://track.example.com/hooks/kuaidi100", "push_salt_env": "KUAIDI100_SALT"}
    carrier = load(tmp_path, doc).carrier
    assert carrier.callback_url == "http://track.example.com/hooks/kuaidi100"
    assert carrier.push_salt.env == "KUAIDI100_SALT"


@pytest.mark.parametrize("value", ["track.example.com/hooks/kuaidi100", "ftp://example.com/x", "http:///hooks", ""])
def test_a_callback_url_that_is_no_http_url_is_refused(tmp_path, doc, value):
    doc["carrier"] = {"callback_url": value}
    e = error(tmp_path, doc)
    assert e.entry == "carrier.callback_url" and "http(s) URL" in e.problem and "hooks/kuaidi100" in e.fix


def test_a_database_password_in_the_file_is_refused(tmp_path, doc):
    doc["warehouse"] = {"url": "postgresql+psycopg2://pipeline:hunter2@db/orders"}
    e = error(tmp_path, doc)
    assert e.entry == "warehouse.url" and "url_env" in e.fix and "hunter2" not in str(e)


def test_url_from_an_unset_environment_variable(tmp_path, doc, monkeypatch):
    monkeypatch.delenv("ERP_DATABASE_URL", raising=False)
    doc["sources"]["orders"] = {**doc["sources"]["orders"], "url_env": "ERP_DATABASE_URL"}
    del doc["sources"]["orders"]["url"]
    e = unreachable(tmp_path, doc, "orders")
    assert e.entry == "sources.orders.url_env" and "export ERP_DATABASE_URL" in e.fix


def test_url_from_an_environment_variable(tmp_path, doc, monkeypatch):
    monkeypatch.setenv("ERP_DATABASE_URL", f"sqlite:///{tmp_path / 'orders.db'}")
    doc["sources"]["orders"] = {**doc["sources"]["orders"], "url_env": "ERP_DATABASE_URL"}
    del doc["sources"]["orders"]["url"]
    config = load(tmp_path, doc)
    assert config.sources["orders"].url.env == "ERP_DATABASE_URL"
    assert "order_no" in check_source(config.path, config.sources["orders"])


def test_a_malformed_variable_name_fails_at_load(tmp_path, doc):
    doc["sources"]["orders"] = {**doc["sources"]["orders"], "url_env": "ERP-URL"}
    del doc["sources"]["orders"]["url"]
    e = error(tmp_path, doc)
    assert e.entry == "sources.orders.url_env" and "not an environment variable name" in e.problem


def test_table_and_query_together(tmp_path, doc):
    doc["sources"]["orders"]["query"] = "SELECT * FROM orders"
    e = error(tmp_path, doc)
    assert e.entry == "sources.orders" and "exactly one" in e.problem


def test_unknown_top_level_key(tmp_path, doc):
    doc["warehuose"] = {"url": "sqlite:///x.db"}
    assert error(tmp_path, doc).entry == "warehuose"


def test_missing_file_says_how_to_get_one(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "absent.yaml")
    assert "order-pipeline demo" in info.value.fix


def test_invalid_yaml(tmp_path):
    path = tmp_path / "order_pipeline.yaml"
    path.write_text("sources: [unclosed", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "not valid YAML" in info.value.problem


def test_config_path_from_environment(tmp_path, doc, monkeypatch):
    path = tmp_path / "elsewhere.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    monkeypatch.setenv("ORDER_PIPELINE_CONFIG", str(path))
    assert load_config().path == path


@pytest.mark.parametrize("url", ["mysqlx://erp@db/erp", "oracle+nosuchdriver://erp@db/erp"])
def test_a_url_no_installed_driver_reads_fails_at_load_naming_the_entry(tmp_path, doc, url):
    doc["sources"]["orders"]["url"] = url
    e = error(tmp_path, doc)
    assert e.entry == "sources.orders.url" and "no installed database driver" in e.problem
    assert "postgresql+psycopg2://" in e.fix


def test_a_bare_postgresql_url_is_read_by_the_installed_driver(tmp_path, doc):
    doc["warehouse"] = {"url": "postgresql://pipeline@db/orders"}
    assert load(tmp_path, doc).warehouse_url.value == "postgresql://pipeline@db/orders"
