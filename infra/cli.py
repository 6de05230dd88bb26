"""The `crm` command: `crm up` runs the whole platform; the rest are single jobs."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

import psycopg

from events.producer import TouchpointProducer
from events.schemas import SCHEMA_DIR, write_all
from infra.broker import EmbeddedBroker
from infra.demo import generate, send_demo
from infra.eventstore import EventStore
from infra.logs import configure_logging
from infra.postgres import EmbeddedPostgres
from infra.settings import Settings
from infra.supervisor import Child, Supervisor
from infra.topics import ensure_topics
from infra.webhooks import create_tables as create_webhook_tables

log = logging.getLogger("crm")

# Services run as `python -m <module>`: infra starts them without importing them.
SERVICES = {
    "recorder": "services.recorder",
    "relay": "services.relay",
    "projector": "services.projector",
    "api": "api",
    "webhooks": "services.webhooks",
}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="crm", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="run broker, PostgreSQL, every service and the API")
    up.add_argument("--api-port", type=int, default=8000)
    up.add_argument("--broker-port", type=int, default=9092)
    up.add_argument("--pg-port", type=int, default=5433)
    up.add_argument("--data-dir", type=Path, default=Path("./var"))
    up.add_argument("--demo", action="store_true", help="also load the demo data (crm demo)")
    up.set_defaults(run=_up)

    demo = commands.add_parser(
        "demo", help="send months of realistic touchpoints for many customers through the SDK"
    )
    demo.add_argument("--customers", type=int, default=2000)
    demo.add_argument("--months", type=int, default=12)
    demo.add_argument("--seed", type=int, default=42)
    demo.set_defaults(run=_demo)

    for name, module in SERVICES.items():
        service = commands.add_parser(name, help=f"run only the {name} (python -m {module})")
        service.set_defaults(run=lambda _args, module=module: _exec(module))

    schemas = commands.add_parser("schemas", help="write the JSON Schemas of the wire contract")
    schemas.add_argument("--out", type=Path, default=SCHEMA_DIR)
    schemas.set_defaults(run=_schemas)

    replay = commands.add_parser(
        "replay", help="drop read models and rebuild them from the event store"
    )
    replay.add_argument(
        "views",
        nargs="*",
        metavar="VIEW",
        help="customer_360, balance, complaints, followups, offers, touchpoints, identifiers or "
        "merges (default: all)",
    )
    replay.set_defaults(run=lambda args: _exec("services.projector", "replay", *args.views))

    migrate = commands.add_parser("migrate", help="create the event store and webhook tables")
    migrate.set_defaults(run=_migrate)

    args = parser.parse_args(argv)
    configure_logging("crm")
    args.run(args)


def _up(args: argparse.Namespace) -> None:
    settings = Settings()
    data_dir: Path = args.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        broker: EmbeddedBroker | None = None
        bootstrap = settings.kafka_bootstrap_servers
        if not bootstrap:
            broker = stack.enter_context(EmbeddedBroker(args.broker_port, data_dir / "logs"))
            bootstrap = broker.bootstrap
        dsn = settings.database_url
        if not dsn:
            postgres = EmbeddedPostgres(data_dir / "postgres", args.pg_port)
            dsn = stack.enter_context(postgres).url
        ensure_topics(bootstrap, settings.topic_partitions, settings.replication_factor)
        _create_tables(dsn)

        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "DATABASE_URL": dsn,
            "CRM_API_PORT": str(args.api_port),
        }
        children = [Child(name, module, env) for name, module in SERVICES.items()]
        if args.demo:
            children.append(Child("demo", "infra.cli", env, args=("demo",), restart=False))
        print(
            f"broker:   {bootstrap}{' (embedded)' if broker else ''}\n"
            f"database: {dsn}\n"
            f"api:      http://{settings.api_host}:{args.api_port} "
            f"(docs at /docs)\nCtrl-C stops everything.",
            flush=True,
        )

        def watch_broker() -> None:
            if broker is not None and broker.pid is None:
                log.warning("event=broker_died action=restart_empty")
                broker.start()
                ensure_topics(
                    bootstrap,
                    settings.topic_partitions,
                    settings.replication_factor,
                    recreate_wrong=True,
                )

        Supervisor(children, watchdog=watch_broker).run()
    print("stopped", flush=True)


def _create_tables(dsn: str) -> None:
    store = EventStore(dsn)
    try:
        store.create_tables()
    finally:
        store.close()
    with psycopg.connect(dsn) as conn:
        create_webhook_tables(conn)


def _migrate(_: argparse.Namespace) -> None:
    _create_tables(Settings().dsn)


def _demo(args: argparse.Namespace) -> None:
    settings = Settings()
    with TouchpointProducer(settings.bootstrap, source="demo") as producer:
        events = generate(customers=args.customers, months=args.months, seed=args.seed)
        sent = send_demo(producer, events, total=None)
    print(f"demo: sent {sent} touchpoints for {args.customers} customers", flush=True)


def _schemas(args: argparse.Namespace) -> None:
    for path in write_all(args.out):
        print(path)


def _exec(module: str, *args: str) -> None:
    os.execv(sys.executable, [sys.executable, "-m", module, *args])


if __name__ == "__main__":
    main()
