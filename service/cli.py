"""The `bitplan` command: serve, migrate, demo (and more as the service grows)."""

from __future__ import annotations

import argparse
import logging
import sys


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service.api.app import create_app
    from service.config import get_settings

    settings = get_settings()
    if args.host:
        settings.host = args.host
    if args.port:
        settings.port = args.port
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info")
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from service.config import get_settings
    from service.db import migrate

    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    url = settings.resolved_database_url
    migrate.upgrade(url, args.revision)
    print(f"database at revision {migrate.current_revision(url)} (head {migrate.head_revision(url)})")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from service.demo import run_demo

    return run_demo(url=args.url, bits=args.bits, keep_serving=args.keep_serving, architecture=args.architecture)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bitplan", description="Mixed-precision bit-allocation search.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the HTTP API (and the in-process job runner when no Redis is set)")
    p.add_argument("--host", default=None)
    p.add_argument("--port", type=int, default=None)
    p.set_defaults(func=_serve)

    p = sub.add_parser("migrate", help="upgrade the database schema")
    p.add_argument("--revision", default="head")
    p.set_defaults(func=_migrate)

    p = sub.add_parser("demo", help="train a digits classifier, analyse it and plan it at 4 bits, end to end")
    p.add_argument("--url", default=None, help="use a running server instead of starting one")
    p.add_argument("--bits", type=float, default=4.0, help="average bits per weight of the plan (default 4)")
    p.add_argument("--architecture", choices=["mlp", "cnn"], default="mlp")
    p.add_argument("--keep-serving", action="store_true", help="leave the server running after the demo")
    p.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
