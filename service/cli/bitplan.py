"""The `bitplan` command: serve, migrate, demo (and more as the service grows)."""

from __future__ import annotations

import argparse
import logging
import sys

from workers.metrics import DEFAULT_METRIC


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
    try:
        app = create_app(settings)
    except ValueError as exc:  # an unsafe or inconsistent configuration: say which, no traceback
        print(f"bitplan serve: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info")
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from service.config import get_settings
    from service.storage.db import migrate

    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    url = settings.resolved_database_url
    migrate.upgrade(url, args.revision)
    print(f"database at revision {migrate.current_revision(url)} (head {migrate.head_revision(url)})")
    return 0


def _worker(args: argparse.Namespace) -> int:
    from service.config import get_settings
    from service.jobs.rq_worker import run_worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_worker(get_settings(), burst=args.burst, concurrency=args.concurrency)


def _solve(args: argparse.Namespace) -> int:
    from service.cli.solve_cli import run_solve

    return run_solve(args.problem, budgets=args.budget, frontier_points=args.frontier, cost=args.cost,
                     backend=args.backend, as_json=args.json)


def _demo(args: argparse.Namespace) -> int:
    from service.cli.demo import run_demo

    return run_demo(url=args.url, bits=args.bits, keep_serving=args.keep_serving, architecture=args.architecture,
                    port=args.port)


def _lazy(module: str, name: str):
    """A command handler imported on use, so `bitplan serve` never loads the client side and vice versa."""

    def run(args: argparse.Namespace) -> int:
        import importlib

        return getattr(importlib.import_module(module), name)(args)

    return run


def _add_client_commands(sub) -> None:
    from service.cli.commands import add_client_args

    p = sub.add_parser("submit", help="upload a model (and dataset) and start an analysis; prints its id")
    p.add_argument("model", help="safetensors weights (with --spec) or a torch.export .pt2")
    p.add_argument("--spec", help='JSON or a JSON file: {"architecture": "mlp", "hyperparams": {...}}')
    p.add_argument("--dataset", help="calibration safetensors with 'inputs' and optional 'targets'")
    p.add_argument("--candidates", nargs="+", help="candidate formats, e.g. int4 int8 (or int4,int8)")
    p.add_argument("--metric", default=DEFAULT_METRIC)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--options", help='analysis options, JSON or a JSON file: e.g. \'{"max_probes": 64}\' or'
                                     ' {"hardware": "a100", "latency_table": {...}}')
    p.add_argument("--latency-table", metavar="FILE",
                   help='measured latencies, a JSON file {layer: {candidate: ms}} (sent as options.latency_table)')
    p.add_argument("--shards", type=int, metavar="N",
                   help="split the calibration samples over N sub-jobs, run by whichever workers are free and"
                        " merged exactly (sent as options.shards; sampled_gauss_newton only)")
    p.add_argument("--name", help="the model's name on the server (default: the file name)")
    p.add_argument("--wait", action="store_true", help="follow it with a progress bar until it ends")
    p.add_argument("--poll", type=float, default=0.5, help=argparse.SUPPRESS)
    add_client_args(p)
    p.set_defaults(func=_lazy("service.cli.commands", "submit"))

    p = sub.add_parser("status", help="state and progress of an analysis")
    p.add_argument("id")
    add_client_args(p)
    p.set_defaults(func=_lazy("service.cli.commands", "status"))

    p = sub.add_parser("plan", help="solve a finished analysis for a budget (or store an assignment you chose)"
                                    " and print the per-layer plan")
    p.add_argument("id")
    p.add_argument("--assignment", metavar="JSON|FILE",
                   help="instead of a budget: {unit: candidate} for every unit (e.g. an evaluation's baseline)")
    p.add_argument("--bits", type=float, help="avg_bits: average bits per weight (scale overhead included)")
    p.add_argument("--bytes", type=float, help="total bytes of the quantized layers")
    p.add_argument("--budget", action="append", default=[], metavar="COST=LIMIT",
                   help="any budget word, e.g. latency_ms=3 or avg_bits=4 (repeatable; all given limits must hold)")
    p.add_argument("--backend", default="auto")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    add_client_args(p)
    p.set_defaults(func=_lazy("service.cli.commands", "plan"))

    p = sub.add_parser("frontier", help="the Pareto frontier of a finished analysis (cost vs damage)")
    p.add_argument("id")
    p.add_argument("--cost", default="bytes", help="the cost axis (bytes, bops, latency_ms...; default bytes)")
    p.add_argument("--points", type=int, default=50, help="budgets on the grid (default 50)")
    p.add_argument("--json", action="store_true", help="print the server's JSON")
    add_client_args(p)
    p.set_defaults(func=_lazy("service.cli.commands", "frontier"))

    p = sub.add_parser("export", help="a plan exported for an engine, written to a file")
    p.add_argument("id", help="plan id")
    p.add_argument("--format", "-f", default="json",
                   help="json, llamacpp, llamacpp-types, gptqmodel, llmcompressor, nncf, hawq or safetensors")
    p.add_argument("-o", "--output", help="file to write (default: the server's file name; - for stdout)")
    add_client_args(p)
    p.set_defaults(func=_lazy("service.cli.commands", "export"))

    from service.cli.batch import __doc__ as batch_doc

    p = sub.add_parser("batch", help="run a YAML/JSONL file of jobs with progress bars and a summary table",
                       description=batch_doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file")
    p.add_argument("--poll", type=float, default=1.0, help="seconds between status polls")
    p.add_argument("--timeout", type=float, default=6 * 3600, help="give up on jobs still running after this")
    add_client_args(p)
    p.set_defaults(func=_lazy("service.cli.batch", "main"))

    p = sub.add_parser("token", help="create, list or revoke API tokens (on this server's database)")
    tsub = p.add_subparsers(dest="token_command", required=True)
    t = tsub.add_parser("create", help="make a token and print its secret once")
    t.add_argument("--name", required=True)
    t.add_argument("--scopes", default="read,submit", help="comma-separated: read, submit, admin")
    t = tsub.add_parser("list", help="tokens (id, prefix, name, scopes)")
    t.add_argument("--all", action="store_true", help="include revoked ones")
    t = tsub.add_parser("revoke", help="revoke a token by id or prefix")
    t.add_argument("id")
    p.set_defaults(func=_lazy("service.cli.commands", "token"))


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

    p = sub.add_parser("worker", help="run RQ workers (BITPLAN_REDIS_URL) sharing the database and blob store")
    p.add_argument("--burst", action="store_true", help="quit when the queue is empty")
    p.add_argument("--concurrency", type=int, default=1, help="worker processes, one job each (default 1)")
    p.set_defaults(func=_worker)

    p = sub.add_parser("solve", help="solve a problem file (docs/problem-format.md) locally: a plan or a frontier")
    p.add_argument("problem", help="problem JSON file, or - for standard input")
    p.add_argument("--budget", action="append", default=[], metavar="COST=LIMIT",
                   help="e.g. bytes=1e6, avg_bits=4, latency_ms=3.5 (repeatable: all must hold)")
    p.add_argument("--frontier", type=int, default=None, metavar="N", help="exact frontier over N budgets")
    p.add_argument("--cost", default="bytes", help="the frontier's cost axis (default bytes)")
    p.add_argument("--backend", default="auto")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_solve)

    p = sub.add_parser("demo", help="train a digits classifier, analyse it and plan it at 4 bits, end to end")
    p.add_argument("--url", default=None, help="use a running server instead of starting one")
    p.add_argument("--port", type=int, default=None, help="port of the server it starts (default 8000, or a free one)")
    p.add_argument("--bits", type=float, default=4.0, help="average bits per weight of the plan (default 4)")
    p.add_argument("--architecture", choices=["mlp", "cnn"], default="mlp")
    p.add_argument("--keep-serving", action="store_true", help="leave the server running after the demo")
    p.set_defaults(func=_demo)
    _add_client_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
