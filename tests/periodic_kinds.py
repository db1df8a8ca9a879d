"""Periodic job kinds for the tests of periodic scheduling, loaded with
`ODIN_KIND_MODULES='["tests.periodic_kinds"]'`.

They live apart from `tests.feature_kinds` because the leader of any server that loads them
enqueues their jobs at every minute, which would add jobs to the other tests.

Cron has minute resolution, so the tests do not wait for a tick: they record a schedule's last
tick a few minutes back in `odin.periodic_ticks` before the servers start, which makes the
latest tick due at once.
"""

from __future__ import annotations

from typing import Any

from odin_ext import kind
from odin_ext.kinds import Periodic

EVERY_MINUTE = "* * * * *"
NEW_YEAR = "0 0 1 1 *"


@kind(periodic=[Periodic(EVERY_MINUTE, args={"label": "minutely"})])
async def every_minute(label: str) -> dict[str, Any]:
    """Enqueued at every minute in UTC."""
    return {"label": label}


@kind(periodic=[Periodic(EVERY_MINUTE, timezone="Asia/Kolkata", args={"label": "probe"})])
async def every_minute_probe(label: str) -> dict[str, Any]:
    """Enqueued at every minute in India's time zone, which is 5 h 30 min off UTC."""
    return {"label": label}


@kind(
    periodic=[
        Periodic(EVERY_MINUTE, args={"region": "eu"}),
        Periodic(EVERY_MINUTE, args={"region": "us"}),
    ]
)
async def per_region(region: str) -> dict[str, Any]:
    """Enqueued at every minute twice, once per region: two schedules on one cron."""
    return {"region": region}


@kind(periodic=[Periodic(NEW_YEAR, timezone="Europe/Oslo", catch_up=True)])
async def new_year_caught_up() -> None:
    """Enqueued at midnight on 1 January in Oslo; a missed tick is caught up."""


@kind(periodic=[Periodic(NEW_YEAR, timezone="Pacific/Auckland", catch_up=False)])
async def new_year_skipped() -> None:
    """Enqueued at midnight on 1 January in Auckland; a missed tick is skipped."""


@kind(periodic=[Periodic(NEW_YEAR, catch_up=True)])
async def new_year_fresh() -> None:
    """Enqueued at midnight on 1 January in UTC; the tests record no tick for it."""
