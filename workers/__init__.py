"""Sensitivity analysis: torch lives here and only here.

Importing this package (or `workers.jobs`) loads no torch; the job functions import the heavy
modules when they run, so the process that enqueues jobs never starts torch's thread pools.
"""
