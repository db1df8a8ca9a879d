"""Odin: a PostgreSQL job service. This module is the deployable entry point.

- ``odin:app`` is the ASGI application (``hypercorn odin:app`` works), built from the
  ``ODIN_*`` settings on first access.
- ``main`` is the ``odin`` command line: ``odin serve``, ``odin migrate``, ``odin submit``.
"""

from __future__ import annotations

from typing import Any

from quart import Quart

from odin_ext.api import api, register_error_handlers
from odin_ext.auth import install_auth
from odin_ext.console import console
from odin_ext.hypercorn_fixes import close_connections_on_eof
from odin_ext.kinds import Registry
from odin_ext.metrics import metrics
from odin_ext.runtime import Runtime
from odin_ext.settings import Settings, load_settings
from odin_ext.stats import stats


def create_app(settings: Settings | None = None, registry: Registry | None = None) -> Quart:
    """Build the Quart app and the runtime it starts when serving begins."""
    settings = settings or load_settings()
    close_connections_on_eof()
    runtime = Runtime(settings, registry)
    app = Quart("odin")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["odin"] = runtime
    app.register_blueprint(api)
    app.register_blueprint(stats)
    app.register_blueprint(console)
    app.register_blueprint(metrics)
    register_error_handlers(app)
    install_auth(app, settings)
    app.before_serving(runtime.start)
    app.after_serving(runtime.stop)
    return app


def main(argv: list[str] | None = None) -> int:
    """Run the ``odin`` command line; return its exit status."""
    from odin_ext.cli import run

    return run(argv, create_app)


def __getattr__(name: str) -> Any:
    # ``app`` is built on first access, so importing this module reads no settings.
    if name == "app":
        app = create_app()
        globals()["app"] = app
        return app
    raise AttributeError(f"module 'odin' has no attribute {name!r}")


if __name__ == "__main__":
    raise SystemExit(main())
