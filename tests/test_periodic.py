"""Tests of periodic jobs: each cron tick is enqueued once, across replicas, leader changes
and restarts; a missed tick is caught up once or skipped.

Cron has minute resolution, so instead of waiting for a tick the tests record a schedule's
last tick in the past before the servers start (see `tests.periodic_kinds`). A test may
still cross a minute boundary, which legitimately enqueues the next tick, and a busy leader
may create a tick's job a little after the next tick. So the checks hold the jobs to what
distinct ticks allow: by any moment, no more jobs can have been created than ticks have
passed since the recorded one.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from functools import partial
from zoneinfo import ZoneInfo

import psycopg
import pytest
from cronsim import CronSim

from odin_ext.kinds import Kind, Periodic, Registry
from odin_ext.leader import schedule_name
from tests.periodic_kinds import EVERY_MINUTE
from tests.support import assert_stays, wait_until

KIND_MODULES = '["tests.periodic_kinds"]'
# Several leader rounds (every 0.25 s) in which no second job may appear for a tick.
WATCH_SECONDS = 1.5


def periodic_kind(name: str) -> Kind:
    return Registry.from_modules(["tests.periodic_kinds"]).get(name)


def only_schedule(kind_name: str) -> tuple[str, Periodic]:
    item = periodic_kind(kind_name)
    [schedule] = item.options.periodic
    return schedule_name(item, schedule), schedule


def record_last_tick(database_url: str, schedule: str, tick: datetime) -> None:
    with psycopg.connect(database_url) as connection:
        connection.execute(
            "INSERT INTO odin.periodic_ticks (schedule, last_tick) VALUES (%s, %s)"
            " ON CONFLICT (schedule) DO UPDATE SET last_tick = excluded.last_tick",
            (schedule, tick),
        )


def jobs_and_last_tick(
    database_url: str, kind_name: str, schedule: str
) -> tuple[int, datetime | None]:
    """Return the number of jobs of the kind and the schedule's last tick, in one snapshot."""
    with psycopg.connect(database_url) as connection:
        row = connection.execute(
            "SELECT (SELECT count(*) FROM odin.jobs WHERE kind = %s),"
            " (SELECT last_tick FROM odin.periodic_ticks WHERE schedule = %s)",
            (kind_name, schedule),
        ).fetchone()
    assert row is not None
    return int(row[0]), row[1]


def last_tick_is(database_url: str, kind_name: str, schedule: str, tick: datetime) -> bool:
    return jobs_and_last_tick(database_url, kind_name, schedule)[1] == tick


def ticks_between(schedule: Periodic, after: datetime, upto: datetime) -> int:
    """Return the number of ticks of `schedule` later than `after` and not later than `upto`."""
    count = 0
    for tick in CronSim(schedule.cron, after.astimezone(ZoneInfo(schedule.timezone))):
        if tick > upto:
            return count
        count += 1
    return count


def latest_tick(schedule: Periodic, moment: datetime) -> datetime:
    """Return the latest tick of `schedule` at or before `moment`, in UTC.

    Computed here rather than with `Periodic.latest_tick`, which the tests check.
    """
    # Cron ticks fall on whole minutes, so cutting the fraction of a second loses none,
    # and CronSim's reverse iteration yields the ticks strictly before its start.
    local = moment.astimezone(ZoneInfo(schedule.timezone)).replace(microsecond=0)
    return next(CronSim(schedule.cron, local + timedelta(seconds=1), reverse=True)).astimezone(UTC)


def previous_tick(schedule: Periodic, tick: datetime) -> datetime:
    return latest_tick(schedule, tick - timedelta(seconds=1))


def one_job_per_tick(database_url: str, kind_name: str, recorded: datetime) -> bool:
    """Tell whether the kind has a job for a tick after the `recorded` last tick.

    Raises AssertionError at once when the kind has more jobs than distinct ticks allow:
    each job is enqueued for a tick later than `recorded` and not later than its creation.
    """
    name, schedule = only_schedule(kind_name)
    with psycopg.connect(database_url) as connection:
        rows = connection.execute(
            "SELECT created_at FROM odin.jobs WHERE kind = %s ORDER BY created_at", (kind_name,)
        ).fetchall()
    for number, (created_at,) in enumerate(rows, start=1):
        ticks = ticks_between(schedule, recorded, created_at)
        assert number <= ticks, (
            f"{number} jobs of {kind_name} created by {created_at.isoformat()}, but only "
            f"{ticks} ticks since {recorded.isoformat()}: a tick was enqueued twice, or "
            "before its time"
        )
    _, last = jobs_and_last_tick(database_url, kind_name, name)
    return bool(rows) and last is not None and last > recorded


def make_previous_tick_due(database_url: str, kind_name: str) -> datetime:
    """Record the tick before the latest as the last one enqueued; return it."""
    name, schedule = only_schedule(kind_name)
    previous = previous_tick(schedule, latest_tick(schedule, datetime.now(UTC)))
    record_last_tick(database_url, name, previous)
    return previous


def is_leader(server) -> bool:
    for line in server.log_text().splitlines():
        if line.startswith("{") and json.loads(line).get("event") == "leader_elected":
            return True
    return False


@pytest.mark.parametrize(
    "now",
    [
        "2026-03-02T09:14:00+00:00",
        "2026-03-02T09:14:59+00:00",
        "2026-03-02T09:14:59.200+00:00",
        "2026-03-02T09:14:59.999+00:00",
        "2026-03-02T09:15:00.500+00:00",
    ],
)
def test_latest_tick_not_after_now(now):
    moment = datetime.fromisoformat(now)
    for timezone in ("UTC", "Asia/Kolkata"):
        tick = Periodic(EVERY_MINUTE, timezone=timezone).latest_tick(moment)
        assert tick <= moment, f"{timezone}: latest tick at {now} is {tick.isoformat()}"
        assert moment - tick < timedelta(minutes=1)


def test_due_tick_enqueued_once_by_two_replicas(database_url, odin_server):
    recorded = make_previous_tick_due(database_url, "every_minute")
    replicas = [
        odin_server(database_url, wait_ready=False, ODIN_KIND_MODULES=KIND_MODULES)
        for _ in range(2)
    ]
    for replica in replicas:
        replica.wait_until_ready()

    wait_until(
        lambda: one_job_per_tick(database_url, "every_minute", recorded),
        5,
        "the due tick of every_minute is enqueued",
    )
    assert_stays(
        lambda: one_job_per_tick(database_url, "every_minute", recorded),
        WATCH_SECONDS,
        "every_minute has one job per tick",
    )
    with psycopg.connect(database_url) as connection:
        row = connection.execute(
            "SELECT args, queue FROM odin.jobs WHERE kind = 'every_minute' ORDER BY id LIMIT 1"
        ).fetchone()
    assert row == ({"label": "minutely"}, "default")


@pytest.mark.parametrize("kill_moment", ["right_after_tick_due", "after_leader_enqueued"])
def test_tick_enqueued_once_across_leader_changes(database_url, odin_server, kill_moment):
    first_recorded = make_previous_tick_due(database_url, "every_minute")
    leader = odin_server(database_url, ODIN_KIND_MODULES=KIND_MODULES)
    wait_until(
        lambda: one_job_per_tick(database_url, "every_minute", first_recorded),
        5,
        "the first leader enqueues the due tick",
    )
    follower = odin_server(database_url, ODIN_KIND_MODULES=KIND_MODULES)
    assert is_leader(leader)
    assert not is_leader(follower)

    # The first leader has initialised every schedule by now; make the probe's tick due
    # and kill the leader around the moment it enqueues that tick.
    probe_name, _ = only_schedule("every_minute_probe")
    wait_until(
        lambda: jobs_and_last_tick(database_url, "every_minute_probe", probe_name)[1],
        5,
        "the probe schedule is initialised",
    )
    probe_recorded = make_previous_tick_due(database_url, "every_minute_probe")
    if kill_moment == "after_leader_enqueued":
        wait_until(
            lambda: one_job_per_tick(database_url, "every_minute_probe", probe_recorded),
            5,
            "the first leader enqueues the probe's tick",
        )
    leader.kill()

    wait_until(lambda: is_leader(follower), 5, "the second replica becomes leader")
    for kind_name, recorded in (
        ("every_minute", first_recorded),
        ("every_minute_probe", probe_recorded),
    ):
        check = partial(one_job_per_tick, database_url, kind_name, recorded)
        wait_until(check, 5, f"{kind_name} has a job for its due tick")
        assert_stays(
            check,
            WATCH_SECONDS,
            f"{kind_name} has one job per tick after the leader change",
        )

    # A restart: a new replica takes over from the second leader, which stops cleanly.
    successor = odin_server(database_url, ODIN_KIND_MODULES=KIND_MODULES)
    assert follower.terminate() == 0
    wait_until(lambda: is_leader(successor), 5, "the restarted replica becomes leader")
    assert_stays(
        lambda: (
            one_job_per_tick(database_url, "every_minute", first_recorded)
            and one_job_per_tick(database_url, "every_minute_probe", probe_recorded)
        ),
        WATCH_SECONDS,
        "both schedules have one job per tick after the restart",
    )


def test_missed_ticks_caught_up_once_or_skipped(database_url, odin_server):
    now = datetime.now(UTC)
    minutely_name, minutely = only_schedule("every_minute")
    minutely_latest = latest_tick(minutely, now)
    record_last_tick(database_url, minutely_name, minutely_latest - timedelta(minutes=5))
    yearly = {}
    for kind_name in ("new_year_caught_up", "new_year_skipped", "new_year_fresh"):
        name, schedule = only_schedule(kind_name)
        latest = latest_tick(schedule, now)
        yearly[kind_name] = (name, latest)
        if kind_name != "new_year_fresh":
            two_ticks_back = previous_tick(schedule, previous_tick(schedule, latest))
            record_last_tick(database_url, name, two_ticks_back)

    odin_server(database_url, ODIN_KIND_MODULES=KIND_MODULES)
    for kind_name, (name, latest) in yearly.items():
        wait_until(
            partial(last_tick_is, database_url, kind_name, name, latest),
            5,
            f"{kind_name} reaches its latest tick {latest}",
        )
    wait_until(
        lambda: jobs_and_last_tick(database_url, "every_minute", minutely_name)[0] > 0,
        5,
        "the missed minutely ticks are caught up",
    )

    def counts() -> dict[str, int]:
        return {
            kind_name: jobs_and_last_tick(database_url, kind_name, name)[0]
            for kind_name, (name, _) in yearly.items()
        }

    assert_stays(
        lambda: counts() == {"new_year_caught_up": 1, "new_year_skipped": 0, "new_year_fresh": 0},
        WATCH_SECONDS,
        "each yearly tick was caught up once, skipped, or left to come",
    )
    # Five missed minutes are caught up with one job; a minute boundary crossed during the
    # test may add the job of the next tick.
    count, last = jobs_and_last_tick(database_url, "every_minute", minutely_name)
    assert last is not None
    assert 1 <= count <= 1 + ticks_between(minutely, minutely_latest, last)


def test_two_schedules_on_one_cron_both_enqueued(database_url, odin_server):
    item = periodic_kind("per_region")
    latest = latest_tick(item.options.periodic[0], datetime.now(UTC))
    recorded = latest - timedelta(minutes=1)
    names = {schedule_name(item, schedule) for schedule in item.options.periodic}
    for name in names:
        record_last_tick(database_url, name, recorded)

    odin_server(database_url, ODIN_KIND_MODULES=KIND_MODULES)

    def regions() -> list[str]:
        with psycopg.connect(database_url) as connection:
            rows = connection.execute(
                "SELECT args->>'region' FROM odin.jobs WHERE kind = 'per_region' ORDER BY 1"
            ).fetchall()
        return [region for (region,) in rows]

    wait_until(
        lambda: len(regions()) >= 2, 3, "both schedules of per_region enqueue their due tick"
    )
    assert sorted(set(regions())) == ["eu", "us"]
