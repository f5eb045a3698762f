"""`medallion`: what a user does outside the Dagster UI."""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import signal
import subprocess
import sys
import time

from resources.settings import REPO_ROOT, load_settings


def simulator_config(args, **kwargs):
    from assets.simulation.iot import SimulatorConfig

    return SimulatorConfig(
        seed=args.seed,
        malformed_share=args.malformed_share,
        duplicate_share=args.duplicate_share,
        late_share=args.late_share,
        anomaly_share=args.anomaly_share,
        **kwargs,
    )


SIMULATOR_FLAGS = ("seed", "malformed_share", "duplicate_share", "late_share", "anomaly_share", "linger_ms")


def _simulator_argv(args) -> list[str]:
    """The simulator flags given to `medallion dev`, passed on to each `medallion simulate` it starts."""
    given = [(name, getattr(args, name)) for name in SIMULATOR_FLAGS if getattr(args, name) is not None]
    return [x for name, value in given for x in (f"--{name.replace('_', '-')}", str(value))]


def _linger_ms(args) -> int:
    from assets.simulation.iot import SIMULATOR_LINGER_MS

    return SIMULATOR_LINGER_MS if args.linger_ms is None else args.linger_ms


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def _simulator_args(sp) -> None:
    sp.add_argument("--seed", type=int, default=7)
    sp.add_argument("--malformed-share", type=float, default=0.005, help="share of malformed messages")
    sp.add_argument("--duplicate-share", type=float, default=0.01, help="share of producer-retry duplicates")
    sp.add_argument("--late-share", type=float, default=0.01, help="share of events 1-6 hours late")
    sp.add_argument("--anomaly-share", type=float, default=0.02, help="share of anomalous readings")
    sp.add_argument("--linger-ms", type=_non_negative_int, default=None, metavar="MS",
                    help="how long the producer lets a batch fill (default 250)")  # fmt: skip


def _resources():
    """The platform's resources with their EnvVar fields read now: the CLI uses them outside a Dagster run."""
    from resources.config import platform_resources

    return {k: r.process_config_and_initialize() for k, r in platform_resources().items()}


def _print_summary(summary: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary, default=str))
        return
    print(f"produced {summary.get('produced', '-')}  consumed {summary['consumed']}  bronze {summary['bronze_rows']}  "
          f"dead-letter {summary['dead_letter_rows']}  silver {summary['silver_rows']}  quarantined {summary['quarantined_rows']}")  # fmt: skip
    for t, n in summary["gold_rows"].items():
        print(f"  gold {t:<28} {n:>9}   warehouse {summary['warehouse_rows'].get(t, 0):>9}")
    for c, ok in summary["checks"].items():
        print(f"  check {c:<40} {'passed' if ok else 'FAILED'}")
    print(f"reconciled: {summary['reconciled']}   elapsed {summary['elapsed_s']} s")


def _run_pipeline(args, simulate: bool) -> int:
    # A headless pass ends once nothing is requested, so late data in older partitions is taken at once, not
    # on the next tick of the daemon's late-data cron (assets/automation.py reads it when first imported).
    assert "assets.automation" not in sys.modules
    os.environ["MEDALLION_LATE_DATA_CRON"] = ""
    from dagster import DagsterInstance

    from assets.streams import STREAMS
    from medallion.definitions import build_definitions
    from medallion.driver import drive
    from assets.simulation.bad_input import produce_corpus
    from assets.simulation.iot import produce
    from medallion.stack import ensure_kafka, prepare_dagster_home
    from medallion.summary import platform_summary

    began = time.monotonic()
    settings = load_settings()
    say = (lambda *_: None) if args.json else print
    prepare_dagster_home(settings)
    resources = _resources()
    ensure_kafka(settings, STREAMS, resources["lake"], say)
    produced = 0
    if simulate:
        for spec in STREAMS:
            cfg = simulator_config(args, events=args.events)
            stats = produce(resources["kafka"].producer({"linger.ms": _linger_ms(args)}), spec.topic, cfg, events=spec.simulator)
            produced += stats.produced
            say(f"simulated {stats.produced} events into {spec.topic} ({stats.malformed} malformed, {stats.duplicates} duplicates, {stats.late} late)")
            if args.bad_input and spec.bad_input is None:
                say(f"no bad-input corpus declared for {spec.name}")
            elif args.bad_input:
                for i in range(args.bad_input):
                    produced += produce_corpus(resources["kafka"].producer(), spec.topic, spec.bad_input(tag=f"bad{i}-{args.seed}", max_message_bytes=spec.max_message_bytes))
                say(f"mixed the bad-input corpus into {spec.topic} {args.bad_input}x")
    defs = build_definitions(STREAMS, resources)
    with DagsterInstance.get() as instance:
        log = drive(defs, instance, STREAMS, timeout_s=args.timeout)
        summary = platform_summary(STREAMS, resources["lake"], resources["warehouse"], resources["kafka"], instance)
    summary = {
        "produced": produced,
        **summary,
        "ingest_runs": log.ingest_runs,
        "automation_runs": log.automation_runs,
        "failed_runs": log.failed_runs,
        "elapsed_s": round(time.monotonic() - began, 2),
    }
    _print_summary(summary, args.json)
    return 0 if summary["reconciled"] else 1


def cmd_demo(args) -> int:
    return _run_pipeline(args, simulate=True)


def cmd_run(args) -> int:
    return _run_pipeline(args, simulate=False)


def cmd_backfill(args) -> int:
    """Re-derive Silver/Gold/warehouse partitions from Bronze (never from Kafka), one run per partition."""
    from dagster import DagsterInstance

    from assets.streams import STREAMS
    from medallion.backfill import backfill
    from medallion.definitions import build_definitions
    from medallion.stack import prepare_dagster_home

    prepare_dagster_home(load_settings())
    defs = build_definitions(STREAMS, _resources())
    selection = [a.strip() for a in args.assets.split(",")] if args.assets else None
    with DagsterInstance.get() as instance:
        runs = backfill(defs, instance, args.start, args.end, selection, say=print)
    failed = [r for r in runs if not r.success]
    print(f"{len(runs)} runs, {len(failed)} failed")
    return 1 if failed else 0


def cmd_sql(args) -> int:
    resources = _resources()
    local_lake = resources["lake"].local_root
    if local_lake is not None and local_lake.exists():
        # Embedded chDB lets file table functions read only inside its working directory: the local lake, so
        # `deltaLakeLocal('<lake>/silver/iot/silver')` works.
        os.chdir(local_lake)
    try:
        table = resources["warehouse"].query_arrow(args.query)
    except Exception as exc:  # noqa: BLE001 - a bad query or an unreachable server: one line, not a traceback
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"medallion sql: {first}", file=sys.stderr)
        return 1
    rows = table.to_pylist()
    if args.format == "json":
        print(json.dumps(rows, default=str))
    elif args.format == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(table.column_names)
        w.writerows([r[c] for c in table.column_names] for r in rows)
        print(buf.getvalue(), end="")
    else:
        from tabulate import tabulate

        print(tabulate([[r[c] for c in table.column_names] for r in rows], headers=table.column_names))
    return 0


def cmd_lake(args) -> int:
    from dagster import DagsterInstance
    from tabulate import tabulate

    from assets.streams import STREAMS
    from medallion.lake_info import LakeCommandError, find_table, partition_history, rollback, table_rows

    lake = _resources()["lake"]
    try:
        if args.action == "tables":
            rows = table_rows(lake, STREAMS)
            if args.json:
                print(json.dumps(rows))
            else:
                print(tabulate([[r["name"], r["version"] if r["version"] is not None else "-", r["rows"], ",".join(r["partition_by"]) or "-", r["uri"]] for r in rows],
                               headers=["table", "version", "rows", "partition_by", "uri"]))  # fmt: skip
            return 0
        if not args.table:
            raise LakeCommandError(f"`medallion lake {args.action}` needs a table name (see `medallion lake`)")
        table = find_table(lake, STREAMS, args.table)
        if args.action == "history":
            rows = partition_history(lake, table, args.partition)
            if args.json:
                print(json.dumps(rows, default=str))
            else:
                print(tabulate([[r["version"], r["at"], r["operation"], r["rows"] if r["rows"] is not None else "", r["run_id"] or "", json.dumps(r["detail"]) if r["detail"] else ""] for r in rows],
                               headers=["version", "at", "operation", "rows", "run", "detail"]))  # fmt: skip
            return 0
        if args.partition is None or args.to_version is None:
            raise LakeCommandError("`medallion lake rollback TABLE --partition KEY --to-version N`: both are needed")
        from medallion.stack import prepare_dagster_home

        prepare_dagster_home(load_settings())
        with DagsterInstance.get() as instance:
            done = rollback(lake, instance, STREAMS, table, args.partition, args.to_version)
        print(json.dumps(done) if args.json else
              f"{done['table']} {done['partition']}: the rows of version {done['rolled_back_to']} are version {done['version']} now "
              "(reported to Dagster: automation re-derives what depends on it)")  # fmt: skip
        return 0
    except LakeCommandError as exc:
        print(f"medallion lake: {exc}", file=sys.stderr)
        return 2


def cmd_broker(args) -> int:
    from resources.embedded_broker import running_broker, stop_broker

    settings = load_settings()
    if args.action == "start":
        from assets.streams import STREAMS
        from medallion.stack import ensure_kafka

        print(ensure_kafka(settings, STREAMS, _resources()["lake"]))
    elif args.action == "stop":
        print("stopped" if stop_broker(settings.run_dir) else "not running")
    else:
        from tabulate import tabulate

        from resources.embedded_broker import proxy_up

        info = running_broker(settings.run_dir)
        if info is None:
            print("not running")
            return 1
        print(f"{info.bootstrap} (proxy {'up' if proxy_up(info) else 'DOWN: run `medallion broker start`'})")
        rows = [[i, s.bootstrap, "sealed" if s.sealed else ("takes new records" if s is info.newest else "being sealed"), time.strftime("%H:%M:%S", time.localtime(s.created_at))]
                for i, s in enumerate(info.segments)]  # fmt: skip
        print(tabulate(rows, headers=["segment", "address", "state", "started"]))
    return 0


def cmd_simulate(args) -> int:
    from assets.streams import STREAMS
    from assets.simulation.iot import produce

    spec = next((s for s in STREAMS if s.name == args.stream), None)
    if spec is None:
        print(f"simulate: unknown stream {args.stream!r} (streams: {', '.join(s.name for s in STREAMS)})", file=sys.stderr)
        return 2
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    cfg = simulator_config(args, events=args.events, rate=args.rate)
    try:
        stats = produce(_resources()["kafka"].producer({"linger.ms": _linger_ms(args)}), spec.topic, cfg, should_stop=lambda: stop["now"], events=spec.simulator)
    except KeyboardInterrupt:
        return 0
    print(json.dumps(stats.__dict__))
    return 0


# What `medallion dev` tells a user who points a producer of their own at the embedded broker (README: Performance).
EMBEDDED_PRODUCER_ADVICE = (
    "your own producer on the embedded broker: any linger.ms works, but set enable.idempotence=false (Java "
    "clients default to true): the broker moves to a new segment every few thousand records per partition, an "
    "idempotent producer fails at the move, and others may resend a batch there (Silver drops the copy by "
    "event id); or set KAFKA_BOOTSTRAP_SERVERS to a Kafka cluster"
)


def cmd_dev(args) -> int:
    """Embedded broker + simulator + `dagster dev` (webserver on 127.0.0.1 and the daemon, sensors running)."""
    from assets.streams import STREAMS
    from medallion.stack import ensure_kafka, prepare_dagster_home

    settings = load_settings()
    home = prepare_dagster_home(settings)
    lake = _resources()["lake"]
    ui = f"UI: http://127.0.0.1:{args.port}   " if args.port else ""
    print(f"{ui}Kafka: {ensure_kafka(settings, STREAMS, lake)}   lake: {lake.uri}   DAGSTER_HOME: {home}")
    if settings.kafka_bootstrap is None:
        print(EMBEDDED_PRODUCER_ADVICE)
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    bin_dir = os.path.dirname(sys.executable)
    sims = []
    if args.rate > 0:
        # One simulator per stream: each stream's own event generator into its own topic.
        for spec in STREAMS:
            sims.append(subprocess.Popen(
                [os.path.join(bin_dir, "medallion"), "simulate", "--stream", spec.name, "--events", "0", "--rate", str(args.rate), *_simulator_argv(args)], env=env
            ))  # fmt: skip
        print(f"simulator: {args.rate} events/s into each of {', '.join(s.topic for s in STREAMS)}")
    cmd = [os.path.join(bin_dir, "dagster"), "dev", "-h", "127.0.0.1", "-p", str(args.port), "-w", str(REPO_ROOT / "workspace.yaml")]
    try:
        return subprocess.call(cmd, env=env, cwd=REPO_ROOT)
    except KeyboardInterrupt:
        return 0
    finally:
        for sim in sims:
            sim.terminate()
        for sim in sims:
            sim.wait(10)


def cmd_metrics(args) -> int:
    """Operational figures per stream in Prometheus's text format: once, or served on /metrics."""
    from dagster import DagsterInstance

    from medallion.metrics import make_registry, platform_collector, render, serve
    from medallion.stack import prepare_dagster_home

    if not os.environ.get("DAGSTER_HOME"):  # a deployment sets it (PostgreSQL instance); embedded: this home's
        prepare_dagster_home(load_settings())
    try:
        instance = DagsterInstance.get()
    except Exception as exc:  # noqa: BLE001 - check figures are left out, the rest is still served
        print(f"no Dagster instance ({exc}); contract-check figures left out", file=sys.stderr)
        instance = None
    registry = make_registry(platform_collector(instance))
    if not args.serve:
        print(render(registry), end="")
        return 0
    server, _ = serve(registry, args.port, args.host)
    print(f"serving metrics on http://{args.host}:{args.port}/metrics", flush=True)
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    try:
        while not stop["now"]:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    server.shutdown()
    return 0


def cmd_erase(args) -> int:
    """Erase one data subject from every layer (see assets/erasure.py); prints no raw id."""
    from assets.erasure import ErasureError, Subject, erase

    resources = _resources()
    say = (lambda *_: None) if args.json else print
    if args.submit:
        from assets.erasure import submit_request

        try:
            request_id = submit_request(resources["lake"], Subject.parse(args.subject), args.requested_by)
        except ErasureError as exc:
            print(f"erase: {exc}", file=sys.stderr)
            return 2
        print(json.dumps({"request_id": request_id}) if args.json else f"filed erasure request {request_id}: launch the erase_subject job (Jobs in the UI) to process it")
        return 0
    try:
        result = erase(Subject.parse(args.subject), resources["lake"], resources["warehouse"], requested_by=args.requested_by, say=say)
    except ErasureError as exc:
        print(f"erase: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, default=str))
        return 0
    for layer, tables in result["removed"].items():
        for table, n in tables.items():
            print(f"  {layer:<12} {table:<28} {n:>7} rows removed   partitions {', '.join(result['partitions'].get(layer, {}).get(table, [])) or '-'}")
    print(f"audit entry {result['erasure_id']} ({result['subject']['kind']} {result['subject']['hash']}) appended; "
          "Kafka keeps the records until the topics' retention expires.")  # fmt: skip
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medallion", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    def pipeline_args(sp):
        sp.add_argument("--json", action="store_true", help="print the summary as one JSON object (last line)")
        sp.add_argument("--timeout", type=float, default=1800.0, help="give up if the pipeline has not settled by then (s)")

    d = sub.add_parser("demo", help="embedded broker + simulator, then sensors and automation until every layer is up to date")
    d.add_argument("--events", type=int, required=True)
    d.add_argument("--bad-input", type=int, default=0, metavar="N", help="also produce the bad-input corpus N times")
    _simulator_args(d)
    pipeline_args(d)
    d.set_defaults(fn=cmd_demo)

    r = sub.add_parser("run", help="process whatever is in the configured topics, once, headless")
    pipeline_args(r)
    r.set_defaults(fn=cmd_run)

    bf = sub.add_parser("backfill", help="re-derive Silver/Gold/warehouse partitions in [start, end] from Bronze")
    bf.add_argument("start", help="first partition key, e.g. 2026-11-20-05:00 (hourly) or 2026-11-20")
    bf.add_argument("end", help="last partition key (inclusive)")
    bf.add_argument("--assets", help="comma-separated asset keys (default: every Silver, Gold and warehouse asset)")
    bf.set_defaults(fn=cmd_backfill)

    q = sub.add_parser("sql", help="run a query on the warehouse")
    q.add_argument("query")
    q.add_argument("--format", choices=["json", "csv", "table"], default="table")
    q.set_defaults(fn=cmd_sql)

    lk = sub.add_parser(
        "lake",
        help="the lake's Delta tables: list them, a table's (or partition's) history, roll a partition back",
        description="Every lake table is a Delta table (read it with polars `pl.scan_delta(uri)`, ClickHouse `deltaLakeLocal(...)`, "
        "Spark, or any Delta reader). `tables` lists name, version, rows, partition_by and uri; `history` shows the commits; "
        "`rollback` publishes an earlier version of one Silver or Gold partition as the newest.",
    )
    lk.add_argument("action", nargs="?", choices=["tables", "history", "rollback"], default="tables")
    lk.add_argument("table", nargs="?", help="a table name from `medallion lake`, e.g. silver_iot")
    lk.add_argument("--partition", help="a partition key, e.g. 2026-11-20-05:00")
    lk.add_argument("--to-version", type=int, help="rollback: the version whose rows the partition gets back")
    lk.add_argument("--json", action="store_true", help="print JSON (one line)")
    lk.set_defaults(fn=cmd_lake)

    b = sub.add_parser("broker", help="the embedded Kafka broker of this MEDALLION_HOME")
    b.add_argument("action", choices=["start", "stop", "status"])
    b.set_defaults(fn=cmd_broker)

    s = sub.add_parser("simulate", help="produce simulated events")
    s.add_argument("--stream", default="iot")
    s.add_argument("--events", type=int, default=10000, help="0 = until stopped")
    s.add_argument("--rate", type=float, default=0.0, help="events/s (0 = as fast as possible)")
    _simulator_args(s)
    s.set_defaults(fn=cmd_simulate)

    v = sub.add_parser("dev", help="embedded broker, simulator and `dagster dev` on 127.0.0.1")
    v.add_argument("--port", type=int, default=3000)
    v.add_argument("--rate", type=float, default=200.0, help="simulator events/s (0 = no simulator)")
    _simulator_args(v)
    v.set_defaults(fn=cmd_dev)

    m = sub.add_parser("metrics", help="operational figures per stream for Prometheus: print once, or --serve /metrics")
    m.add_argument("--serve", action="store_true", help="serve /metrics over HTTP until stopped")
    m.add_argument("--port", type=int, default=9464)
    m.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 in a container)")
    m.set_defaults(fn=cmd_metrics)

    e = sub.add_parser(
        "erase",
        help="erase one data subject from Bronze, dead-letter, Silver, quarantine, Gold and the warehouse (not from Kafka)",
        description="Erase a data subject (GDPR) from every lake layer, the dead-letter table and the warehouse, rewriting only "
        "the partitions that hold it, and append an audit entry (who, when, a keyed hash of the id, partitions, rows removed). "
        "Kafka cannot be erased from here: the source and dead-letter topics keep the records until their retention expires.",
    )
    e.add_argument("--subject", required=True, metavar="KIND:ID", help="user:<user_id> (ads) or sensor:<sensor_id> (IoT)")
    e.add_argument("--requested-by", default=None, help="who asked, for the audit log (default: the OS user)")
    e.add_argument("--json", action="store_true", help="print the result as one JSON object (last line)")
    e.add_argument("--submit", action="store_true", help="only file the request for the `erase_subject` job in the UI; prints its id")
    e.set_defaults(fn=cmd_erase)

    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from deltalake.exceptions import DeltaError

    from resources.lake import CommitConflict, LakeUnavailableError
    from resources.settings import SettingsError
    from resources.warehouse import WarehouseSchemaError

    try:
        return args.fn(args)
    except SettingsError as exc:  # a setting the user gave: one line, which and what to set
        print(f"medallion {args.cmd}: {exc}", file=sys.stderr)
        return 2
    except (LakeUnavailableError, CommitConflict, DeltaError, WarehouseSchemaError) as exc:  # the lake or warehouse said no: one line, what to do
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"medallion {args.cmd}: {first}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
