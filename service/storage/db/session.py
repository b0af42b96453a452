"""Engine and session boundary. Driver errors are re-raised as StorageError here, nowhere else."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from service.errors import ServiceError, StorageError


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


@dataclass(frozen=True)
class PoolSize:
    """Connections kept (`size`) and allowed beyond them (`overflow`), and how long a caller waits for one."""

    size: int = 10
    overflow: int = 20
    timeout_s: float = 30.0


# Threads outside the API's thread pool that hold a connection now and then (job runner, reapers).
RESERVED_CONNECTIONS = 8
_pools: dict[str, PoolSize] = {}


def configure_pool(url: str, *, threads: int, timeout_s: float) -> None:
    """Size `url`'s pool for a server running blocking work on `threads` threads: one connection per
    thread, so no thread waits for a connection another request holds, plus a reserve for the job
    runner and reapers. A wait past `timeout_s` is a StorageError (503), never a hang."""
    _pools[url] = PoolSize(size=threads, overflow=RESERVED_CONNECTIONS, timeout_s=timeout_s)


def get_engine(url: str) -> Engine:
    return _engine(url, _pools.get(url, PoolSize()))


@lru_cache(maxsize=16)
def _engine(url: str, pool: PoolSize) -> Engine:
    if url.startswith("sqlite"):
        sized = {} if ":memory:" in url or url.rstrip("/").endswith("sqlite:") else dict(
            pool_size=pool.size, max_overflow=pool.overflow, pool_timeout=pool.timeout_s)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 10}, **sized)
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = create_engine(url, pool_pre_ping=True, pool_size=pool.size, max_overflow=pool.overflow,
                               pool_timeout=pool.timeout_s)
    return engine


def _factory(url: str) -> sessionmaker[Session]:
    return _sessionmaker(get_engine(url))


@lru_cache(maxsize=16)
def _sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error, driver errors become StorageError."""
    session = _factory(url)()
    try:
        yield session
        session.commit()
    except SQLAlchemyError as exc:
        session.rollback()
        raise StorageError(f"database error: {exc.__class__.__name__}: {exc}") from exc
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


__all__ = ["configure_pool", "get_engine", "session_scope", "ServiceError"]
