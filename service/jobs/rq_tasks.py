"""The function RQ workers import and run. Its only argument is an analysis id: nothing but ids cross Redis."""

from __future__ import annotations

from service.jobs.runner import JobRunner, RunnerConfig

_runner: JobRunner | None = None


def install(runner: JobRunner) -> None:
    """`bitplan worker` installs its runner (built from its settings) before taking jobs."""
    global _runner
    _runner = runner


def run_analysis(analysis_id: str) -> str:
    global _runner
    if _runner is None:  # a plain `rq worker` without `bitplan worker`'s set-up
        from service.config import get_settings

        _runner = JobRunner(RunnerConfig.from_settings(get_settings()))
    return _runner.run(analysis_id)
