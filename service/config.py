"""All configuration, validated once. Solver and worker functions get plain arguments, never this."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BITPLAN_", env_file=".env", extra="ignore")

    data_dir: Path = Field(Path("var"), description="Blobs and the default SQLite database live here.")
    database_url: str | None = Field(None, description="SQLAlchemy URL; SQLite in data_dir when unset.")
    redis_url: str | None = Field(None, description="RQ on Redis when set; the in-process runner otherwise.")
    host: str = "127.0.0.1"
    port: int = 8000
    public_url: str | None = Field(None, description="Base URL printed in links; http://host:port when unset.")
    max_upload_bytes: int = Field(512 * 1024 * 1024, gt=0)
    job_concurrency: int = Field(1, ge=1, description="Jobs the in-process runner runs at once.")
    allow_code_formats: bool | None = Field(
        None, description="Accept formats whose loading is code to torch (torch.export .pt2), loaded only in the "
                          "sandbox; unset: accepted only while auth is off (a single trusted user)."
    )
    sandbox: Literal["auto", "on", "off"] = Field(
        "auto", description="Run job children in a bubblewrap sandbox: auto = when bwrap works here; on = required; "
                            "off = never (then .pt2 models are refused)."
    )
    staging_grace_s: float = Field(
        3600.0, gt=0, description="Upload staging files older than this are left over from a killed upload: swept."
    )
    job_memory_limit_mb: int = Field(8192, ge=256, description="Address-space limit of a job process.")
    job_cpu_limit_s: int = Field(3600, ge=10, description="CPU-time limit of a job process.")
    job_queue: str | None = Field(None, description="Queue back-end by name; 'rq' when redis_url is set, else 'inline'.")
    rq_queue_name: str = Field("bitplan", description="RQ queue the API enqueues to and `bitplan worker` serves.")
    job_max_attempts: int = Field(3, ge=1, description="Attempts of a job before a transient failure is final.")
    job_retry_backoff_s: float = Field(5.0, ge=0, description="First retry delay; doubles on each further attempt.")
    job_heartbeat_s: float = Field(5.0, gt=0, description="How often a running job's owner marks it alive.")
    job_stale_after_s: float = Field(30.0, gt=0, description="A running job silent this long is requeued.")
    job_poll_s: float = Field(0.5, gt=0, description="How often a running job's row is read for a cancel request.")
    job_reaper_s: float = Field(5.0, gt=0, description="How often stale jobs and due retries are looked for.")
    sse_keepalive_s: float = Field(15.0, gt=0, description="Comment lines on an idle event stream keep proxies open.")
    auto_migrate: bool = Field(True, description="Upgrade the database schema to head when the server starts.")
    inspect_timeout_s: float = Field(120.0, gt=0, description="Wall-clock limit of upload inspection.")
    auth: Literal["auto", "on", "off"] = Field(
        "auto", description="Bearer tokens required: auto = on unless the server binds a loopback address."
    )
    auth_force_off: bool = Field(
        False, description="Allow auth=off on a non-loopback host (only behind a proxy that authenticates)."
    )
    rate_limit_per_s: float = Field(20.0, ge=0, description="Requests per second per token (0: no limit).")
    rate_limit_burst: int = Field(60, ge=1, description="Requests a token may make at once before the rate holds.")
    max_active_jobs_per_token: int = Field(8, ge=1, description="Queued + running jobs (analyses and evaluations) one token may have.")
    idempotency_ttl_s: int = Field(24 * 3600, ge=60, description="How long an Idempotency-Key is remembered.")
    api_threads: int = Field(
        16, ge=2, le=1000,
        description="Threads the API runs blocking route work on; its database pool is sized to match. Route work "
                    "is mostly Python under one GIL, so more threads add contention, not throughput (bench/api_load.py).",
    )
    db_pool_timeout_s: float = Field(
        5.0, gt=0, description="Longest wait for a database connection before the request is answered 503."
    )
    max_in_flight_requests: int = Field(
        512, ge=1, description="API requests handled at once; more are answered 503 with Retry-After at once."
    )
    max_unpacked_bytes: int = Field(
        8 * 1024**3, gt=0, description="Largest total uncompressed size of an uploaded .pt2 archive."
    )

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'bitplan.db').resolve()}"

    @property
    def base_url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.port}"


@lru_cache
def get_settings() -> Settings:
    return Settings()
