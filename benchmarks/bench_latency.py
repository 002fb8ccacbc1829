"""Benchmark: from a source row's commit to the alert at a webhook, on the production topology.

    .venv/bin/python benchmarks/bench_latency.py                     # 5,000 orders, 10 trials, 60 s idle
    .venv/bin/python benchmarks/bench_latency.py --trials 5 --keep   # leave the dirs and database
    ORDER_PIPELINE_TEST_PG=postgresql+psycopg2://postgres@127.0.0.1:5432/postgres  (the server to use)

What runs, as production would (README "Production"), all on loopback:

- the demo company (`order-pipeline demo --orders N --now <the current time>`, so its data is
  fresh), built with the bench's DAGSTER_HOME, so its first run is in the instance the daemon reads;
- Dagster's instance on PostgreSQL: deploy/dagster.yaml copied into a fresh DAGSTER_HOME
  (/tmp/op-latency-*/home, telemetry off) and DAGSTER_PG_URL naming a throw-away database
  `op_latency_<pid>`; the warehouse stays the demo's SQLite file;
- `dagster code-server start -m order_pipeline.definitions` (gRPC), and `dagster-daemon run` and
  `dagster-webserver` on a workspace that points at that code server (`grpc_server:`).
  `order-pipeline ui` is `dagster dev`, a development server, so it is not used;
- `order-pipeline serve`, which receives the Kuaidi100 push at POST /hooks/kuaidi100;
- a loopback HTTP receiver in this process, the config copy's only alert channel: a `webhook`
  channel, `alerts.default_channels` (every group without its own entry; the demo has none)
  and every `alerts.groups` entry point to it. It records each POST's arrival time.

The clock is the real one (no `--now` for the topology). Once the instance is idle (no run in
flight, none created for `--settle` seconds, every sensor ticked since the start), the idle cost is
sampled over `--idle-seconds`: the CPU time of each process tree (utime+stime from /proc, the
daemon's children included) and the duration of every sensor tick in the window. Sensors are
evaluated in the code server, so its CPU is printed beside the daemon's. Then `--trials` changes
(latency_changes.py: a payment, a reservation, a shipment, a carrier push, a new order, in turn),
each after the last one's runs finished and a random pause within the automation sensor's
observed tick interval (so a change does not always come just after its tick), each chosen to
make an SLA rule of the default rules fire or resolve (a resolution sends a note), so each
reaches the webhook. Each hop is read afterwards
from the instance and the warehouse, in seconds after the commit:

  tick       end of the first tick of the change's sensor after the commit that requested a run
             (the push sensor: that recorded the raw_tracking materialization)
  submitted  the raw run's create_timestamp      started  its start_time (the run worker is up)
  raw        the raw asset's materialization      auto sub / auto start  the run that materialized
  unified    unified_orders after raw             published  order_tracking_snapshot after unified
  alert tick start of the first alert_dispatch tick after published
  alert      the first POST at the receiver naming the order
  customer   created_at of the order's customer_notifications row (shipment, push, new order)

A hop that did not happen prints "-". The targets (product spec): total p50 <= 15 s and
max <= 25 s from the commit to the alert at the webhook; idle daemon <= 5 % of one core.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import sqlalchemy as sa
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import latency_probe as probe
from latency_changes import CUSTOMER_EVENT, KINDS, SENSOR, Change, DemoCompany

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PG_ADMIN = os.environ.get("ORDER_PIPELINE_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
PORTS = range(18900, 19000)
HOOK_CHANNEL = "bench_webhook"
TRIAL_TIMEOUT = 300.0


class Receiver:
    """The alert channel's other end: records (arrival time, body) of every POST."""

    def __init__(self, port: int):
        self.arrivals: list[tuple[float, str]] = []
        lock, arrivals = threading.Lock(), self.arrivals

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                at = time.time()
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode("utf-8", "replace")
                with lock:
                    arrivals.append((at, body))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def first(self, order_no: str, after: float) -> float | None:
        return next((t for t, body in list(self.arrivals) if t >= after and order_no in body), None)


def free_ports(n: int) -> list[int]:
    out = []
    for port in PORTS:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        out.append(port)
        if len(out) == n:
            return out
    raise SystemExit(f"fewer than {n} free ports in {PORTS.start}-{PORTS.stop - 1}")


class Topology:
    """The processes this bench started; each in its own session, so its whole tree can be stopped."""

    def __init__(self, logs: Path, env: dict[str, str]):
        self.logs, self.env, self.procs = logs, env, {}

    def start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            args, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.procs[name] = proc
        return proc

    def check(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise SystemExit(f"{name} exited with {proc.returncode}: see {self.logs / (name + '.log')}")

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.time() + 15
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def wait_for(what: str, ready: Callable[[], bool], timeout: float, topology: Topology) -> None:
    deadline = time.time() + timeout
    while not ready():
        topology.check()
        if time.time() > deadline:
            raise SystemExit(f"{what} not ready after {timeout:.0f} s")
        time.sleep(0.5)


def answers(url: str) -> bool:
    try:
        httpx.get(url, timeout=2)
        return True
    except httpx.HTTPError:
        return False


def bench_config(path: Path, hook_port: int, serve_port: int) -> None:
    """The demo's config, every alert going to the loopback webhook, pushes to this `serve`."""
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    doc.setdefault("channels", {})[HOOK_CHANNEL] = {"type": "webhook", "url": f"http://127.0.0.1:{hook_port}/alert"}
    alerts = doc.setdefault("alerts", {})
    alerts["default_channels"] = [HOOK_CHANNEL]
    for group in (alerts.get("groups") or {}).values():
        group["channels"] = [HOOK_CHANNEL]
    doc["carrier"]["callback_url"] = f"http://127.0.0.1:{serve_port}/hooks/kuaidi100"
    doc["web"]["base_url"] = f"http://127.0.0.1:{serve_port}"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8")


def make_home(home: Path) -> None:
    home.mkdir(parents=True)
    text = (ROOT / "deploy" / "dagster.yaml").read_text(encoding="utf-8")
    (home / "dagster.yaml").write_text(text + "\ntelemetry:\n  enabled: false\n", encoding="utf-8")


def run_trial(change: Change, receiver: Receiver, warehouse: sa.Engine, topology: Topology) -> None:
    """Until the alert reached the webhook and the customer message (if any) is recorded."""
    deadline = change.committed + TRIAL_TIMEOUT
    while time.time() < deadline:
        topology.check()
        alert = receiver.first(change.order_no, change.committed)
        told = change.kind not in CUSTOMER_EVENT or probe.customer_message(warehouse, change.order_no, change.committed)
        if alert is not None and told:
            return
        time.sleep(0.25)
    print(f"  (trial {change.kind} {change.order_no}: not complete after {TRIAL_TIMEOUT:.0f} s)", flush=True)


def fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def report(trials: list[tuple[Change, dict[str, float | None]]]) -> None:
    names = [h for h, _ in probe.HOPS]
    print("\nTrials (seconds after the row's commit):")
    head = f"{'#':>2} {'kind':<11} {'order':<17}" + "".join(f"{n:>11}" for n in names)
    print(head)
    for i, (change, hops) in enumerate(trials, 1):
        print(f"{i:>2} {change.kind:<11} {change.order_no:<17}" + "".join(f"{fmt(hops.get(n)):>11}" for n in names))
    print("\nPer hop: since the commit (median / max) and the hop's own time, from the hop before it (median / max)")
    print(f"  {'hop':<12}{'n':>3}{'p50':>9}{'max':>9}{'step p50':>11}{'step max':>11}")
    for n, label in probe.HOPS:
        since = [t for _, h in trials if (t := h.get(n)) is not None]
        steps = [s for _, h in trials if (s := probe.step(h, n)) is not None]
        print(
            f"  {n:<12}{len(since):>3}{fmt(statistics.median(since) if since else None):>9}"
            f"{fmt(max(since) if since else None):>9}{fmt(statistics.median(steps) if steps else None):>11}"
            f"{fmt(max(steps) if steps else None):>11}   {label}"
        )
    totals = [t for _, h in trials if (t := h.get("alert")) is not None]
    if totals:
        p50, worst = statistics.median(totals), max(totals)
        print(
            f"\nTotal, commit → alert at the webhook: p50 {p50:.1f} s (target ≤ 15: {verdict(p50 <= 15)}), "
            f"max {worst:.1f} s (target ≤ 25: {verdict(worst <= 25)}), {len(totals)}/{len(trials)} arrived"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--orders", type=int, default=5000)
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--idle-seconds", type=float, default=60)
    ap.add_argument("--settle", type=float, default=45, help="seconds without a new run before the instance is idle")
    ap.add_argument("--keep", action="store_true", help="leave the directories and the database for inspection")
    args = ap.parse_args()

    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    work = Path(tempfile.mkdtemp(prefix="op-latency-", dir="/tmp"))
    db = f"op_latency_{os.getpid()}"
    pg_url = PG_ADMIN.rsplit("/", 1)[0] + "/" + db
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{db}"'))
    hook_port, serve_port, grpc_port, web_port = free_ports(4)
    home, demo_dir, logs = work / "home", work / "demo", work / "logs"
    make_home(home)
    logs.mkdir()
    from order_pipeline.demo.company import DEMO_ENV, DEMO_SALT_ENV

    env = {**os.environ, **DEMO_ENV, "DAGSTER_HOME": str(home), "DAGSTER_PG_URL": pg_url, "PYTHONUNBUFFERED": "1"}
    env["ORDER_PIPELINE_CONFIG"] = str(demo_dir / "order_pipeline.yaml")
    os.environ.update({k: env[k] for k in ("DAGSTER_HOME", "DAGSTER_PG_URL")})
    topology = Topology(logs, env)
    print(f"work dir {work}, instance database {db}; load {probe.load()}", flush=True)
    try:
        now = datetime.now(UTC).replace(microsecond=0).isoformat()
        started = time.time()
        demo = [str(BIN / "order-pipeline"), "demo", "--dir", str(demo_dir), "--orders", str(args.orders), "--now", now]
        with open(logs / "demo.log", "wb") as log:
            subprocess.run(demo, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
        print(f"demo company: {args.orders} orders at {now}, built and run once in {time.time() - started:.0f} s")
        bench_config(demo_dir / "order_pipeline.yaml", hook_port, serve_port)
        receiver = Receiver(hook_port)
        workspace = work / "workspace.yaml"
        grpc = {"host": "127.0.0.1", "port": grpc_port, "location_name": "order_pipeline"}
        workspace.write_text(yaml.safe_dump({"load_from": [{"grpc_server": grpc}]}), encoding="utf-8")

        started = time.time()
        code = [str(BIN / "dagster"), "code-server", "start", "-h", "127.0.0.1", "-p", str(grpc_port)]
        topology.start("code_server", [*code, "-m", "order_pipeline.definitions", "--location-name", "order_pipeline"])
        health = [str(BIN / "dagster"), "api", "grpc-health-check", "-p", str(grpc_port), "-h", "127.0.0.1"]
        wait_for("code server", lambda: subprocess.run(health, capture_output=True).returncode == 0, 180, topology)
        topology.start("daemon", [str(BIN / "dagster-daemon"), "run", "-w", str(workspace)])
        web = [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(web_port), "-w", str(workspace)]
        topology.start("webserver", web)
        serve = [str(BIN / "order-pipeline"), "serve", "--port", str(serve_port)]
        topology.start("serve", [*serve, "--config", env["ORDER_PIPELINE_CONFIG"]])
        wait_for("webserver", lambda: answers(f"http://127.0.0.1:{web_port}/server_info"), 180, topology)
        wait_for("serve", lambda: answers(f"http://127.0.0.1:{serve_port}/track"), 120, topology)
        print(
            f"topology up in {time.time() - started:.0f} s: code server :{grpc_port}, daemon, "
            f"webserver :{web_port}, serve :{serve_port}, webhook :{hook_port}",
            flush=True,
        )

        import dagster as dg

        instance = dg.DagsterInstance.get()
        started = time.time()
        probe.wait_idle(instance, started, args.settle, topology.check)
        print(f"idle after {time.time() - started:.0f} s; load {probe.load()}", flush=True)
        probe.print_idle(instance, topology.procs, args.idle_seconds)

        from order_pipeline.contract.config import load_config
        from order_pipeline.warehouse.engine import Warehouse

        config = load_config(env["ORDER_PIPELINE_CONFIG"])
        warehouse = Warehouse(config.warehouse_url.resolve() or "").engine
        company = DemoCompany(
            demo_dir,
            warehouse,
            config.timezone,
            f"http://127.0.0.1:{serve_port}/hooks/kuaidi100",
            DEMO_ENV[DEMO_SALT_ENV],
            set(),
        )
        trials = []
        busy = probe.CpuWindow()
        for i in range(args.trials):
            kind = KINDS[i % len(KINDS)]
            probe.wait_quiet(instance, topology.check)
            # wait_quiet returns just after an automation tick: a change made then would always wait a
            # whole interval for the next one. Real changes come at any moment of the sensors' cycles.
            time.sleep(random.uniform(0, probe.tick_gap(instance, probe.AUTOMATION_SENSOR)))
            change = company.make(kind)
            print(f"trial {i + 1}: {kind} {change.order_no}: {change.detail}", flush=True)
            run_trial(change, receiver, warehouse, topology)
            probe.wait_quiet(instance, topology.check)
            hops = probe.hops(instance, change, SENSOR[change.kind], receiver.first, warehouse)
            print("   " + "  ".join(f"{n} {fmt(hops.get(n))}" for n, _ in probe.HOPS), flush=True)
            trials.append((change, hops))
        print(
            f"\nmachine during the trials: {busy.busy_cores():.2f} of {os.cpu_count()} cores busy; load {probe.load()}"
        )
        report(trials)
        print(f"\nwebhook received {len(receiver.arrivals)} POSTs in all")
    finally:
        topology.stop()
        if args.keep:
            print(f"kept {work} and database {db} (DAGSTER_HOME={home} DAGSTER_PG_URL={pg_url})")
        else:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
            shutil.rmtree(work, ignore_errors=True)
        admin.dispose()


if __name__ == "__main__":
    main()
