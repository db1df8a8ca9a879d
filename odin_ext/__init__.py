"""Odin's engine: settings, storage, job kinds, the worker pool, event streams and the HTTP API.

The deployable entry point is ``odin.py`` at the repository root; job kinds are declared with
``odin_ext.kinds.kind``.
"""

from odin_ext.context import JobContext
from odin_ext.errors import CancelJob, RetryLater
from odin_ext.kinds import kind

__all__ = ["CancelJob", "JobContext", "RetryLater", "kind"]
