"""Clients: the `bitplan` command (`main`), its subcommands, the HTTP client, batch runs, the demo.

`main` is imported lazily so that `import service.cli.client` stays as light as the client itself."""

from __future__ import annotations

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """The `bitplan` entry point (`service.cli:main` in pyproject); the parser is in `service.cli.bitplan`."""
    from service.cli.bitplan import main as run

    return run(argv)
