"""The functions RQ workers import and run. Their arguments are a job kind and an id: nothing but ids
cross Redis."""

from __future__ import annotations

from service.jobs.runner import JobRunner, RunnerConfig

_runner: JobRunner | None = None


def install(runner: JobRunner) -> None:
    """`bitplan worker` installs its runner (built from its settings) before taking jobs."""
    global _runner
    _runner = runner


def run_job(kind: str, job_id: str) -> str:
    global _runner
    if _runner is None:  # a plain `rq worker` without `bitplan worker`'s set-up
        from service.config import get_settings
        from service.jobs.rq_queue import RQQueue

        settings = get_settings()
        _runner = JobRunner(RunnerConfig.from_settings(settings), offer=RQQueue(settings).enqueue)
    return _runner.run(kind, job_id)


def run_analysis(analysis_id: str) -> str:
    """Messages enqueued by an API from before job kinds existed, still on Redis during an upgrade."""
    return run_job("analysis", analysis_id)
