"""Job kinds: the ``kind`` decorator and the registry that the worker and the API share.

A kind is a Python function, async or sync. Its typed parameters are the job's arguments: a
pydantic model is built from them, submissions are validated against it before anything is
stored, and its JSON Schema is served by the API. A parameter annotated ``JobContext`` (async
functions) or ``SyncJobContext`` (sync functions, which run in a thread) receives the context
of the running attempt instead of an argument.

``kind`` only marks the function; ``Registry.from_modules`` imports the modules named in the
settings and collects the marked functions, so importing a module has no other effect.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, get_type_hints
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError
from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from odin_ext.context import JobContext, SyncJobContext
from odin_ext.errors import UnknownKind, ValidationFailed
from odin_ext.jobs import JobState

F = TypeVar("F", bound=Callable[..., Any])

BUILTIN_KIND_MODULE = "odin_ext.builtin_kinds"

_KIND_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.:-]{0,199}$")
_MARK = "__odin_kind__"


UNIQUE_STATES_DEFAULT = ("scheduled", "queued", "running")


@dataclass(frozen=True)
class Unique:
    """Makes a kind's jobs unique: a duplicate submission gets the existing job back.

    Two jobs are duplicates when they have the same kind, the same values of the arguments
    named in ``args`` (all arguments when True, none when False), the same ``key`` (a
    function of the arguments), and fall into the same ``period_seconds`` window of
    submission time, while the existing job is in one of ``states``. With
    ``on_conflict="reject"`` a duplicate is refused with 409 instead.
    """

    args: bool | tuple[str, ...] = True
    key: Callable[[dict[str, Any]], str] | None = None
    states: tuple[str, ...] = UNIQUE_STATES_DEFAULT
    period_seconds: float | None = None
    on_conflict: str = "existing"

    def __post_init__(self) -> None:
        unknown = set(self.states) - {state.value for state in JobState}
        if unknown or not self.states:
            raise ValueError(f"unique states must be job states, got {self.states!r}")
        if self.on_conflict not in ("existing", "reject"):
            raise ValueError(f"on_conflict must be 'existing' or 'reject', got {self.on_conflict!r}")
        if self.period_seconds is not None and self.period_seconds <= 0:
            raise ValueError(f"period_seconds must be positive, got {self.period_seconds}")


@dataclass(frozen=True)
class Periodic:
    """A cron schedule on which the leader enqueues a job of the kind.

    ``cron`` has five fields (minute hour day month weekday) and is read in ``timezone``.
    Each tick is enqueued once, across replicas and leader changes. A tick missed while no
    leader ran (Odin was down) is caught up once when ``catch_up`` is true, however many
    ticks were missed; with ``catch_up`` false, missed ticks are skipped. A schedule seen
    for the first time starts at its next tick.
    """

    cron: str
    timezone: str = "UTC"
    args: dict[str, Any] = field(default_factory=dict)
    catch_up: bool = True
    name: str | None = None

    def __post_init__(self) -> None:
        try:
            zone = ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {self.timezone!r}") from None
        try:
            CronSim(self.cron, datetime.now(zone))
        except CronSimError as exc:
            raise ValueError(f"invalid cron expression {self.cron!r}: {exc}") from None

    def latest_tick(self, now: datetime) -> datetime:
        """Return the latest tick at or before ``now`` (in UTC)."""
        local = now.astimezone(ZoneInfo(self.timezone))
        # CronSim's reverse search yields ticks strictly before its start, so start just
        # after ``now`` to include a tick that falls exactly on it.
        start = local + timedelta(microseconds=1)
        return next(CronSim(self.cron, start, reverse=True)).astimezone(UTC)


@dataclass(frozen=True)
class KindOptions:
    """Defaults that a kind declares; a submission may override queue, attempts and timeout."""

    name: str | None = None
    queue: str = "default"
    max_attempts: int | None = None
    timeout_seconds: float | None = None
    description: str | None = None
    unique: Unique | None = None
    concurrency_limit: int | None = None
    concurrency_key: str | Callable[[dict[str, Any]], str] | None = None
    periodic: tuple[Periodic, ...] = ()
    offload: bool = False


@dataclass(frozen=True)
class Kind:
    """A registered job kind."""

    name: str
    function: Callable[..., Any]
    is_async: bool
    args_model: type[BaseModel]
    context_parameter: str | None
    options: KindOptions

    @property
    def description(self) -> str:
        return self.options.description or inspect.getdoc(self.function) or ""

    def validate_args(self, args: Any) -> dict[str, Any]:
        """Return ``args`` checked and normalised to JSON values, or raise ``ValidationFailed``."""
        if not isinstance(args, dict):
            raise ValidationFailed(
                f"args of kind {self.name!r} must be a JSON object, got {type(args).__name__}"
            )
        try:
            model = self.args_model.model_validate(args)
        except ValidationError as exc:
            raise ValidationFailed(
                f"args do not match kind {self.name!r}", errors=describe_validation(exc, "args")
            ) from None
        return model.model_dump(mode="json")

    def call_arguments(self, args: dict[str, Any]) -> dict[str, Any]:
        """Return the keyword arguments for the function, rebuilt from stored JSON ``args``."""
        model = self.args_model.model_validate(args)
        return {name: getattr(model, name) for name in self.args_model.model_fields}

    def unique_key(self, args: dict[str, Any], now: datetime) -> str | None:
        """Return the key that duplicates of this submission share, or None if not unique."""
        unique = self.options.unique
        if unique is None:
            return None
        if unique.args is True:
            selected = args
        elif unique.args is False:
            selected = {}
        else:
            selected = {name: args.get(name) for name in unique.args}
        parts: dict[str, Any] = {"kind": self.name, "args": selected}
        if unique.key is not None:
            parts["key"] = str(unique.key(args))
        if unique.period_seconds is not None:
            parts["window"] = int(now.timestamp() // unique.period_seconds)
        encoded = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
        return f"{self.name}:{hashlib.sha256(encoded.encode()).hexdigest()[:32]}"

    def concurrency_key(self, args: dict[str, Any]) -> str | None:
        """Return the key whose running jobs count against the limit, or None if unlimited."""
        if self.options.concurrency_limit is None:
            return None
        key = self.options.concurrency_key
        if key is None:
            value = ""
        elif callable(key):
            value = str(key(args))
        else:
            value = json.dumps(args.get(key), sort_keys=True, default=str)
        return f"{self.name}:{value}"

    def schema(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "queue": self.options.queue,
            "max_attempts": self.options.max_attempts,
            "timeout_seconds": self.options.timeout_seconds,
            "unique": self.options.unique is not None,
            "concurrency_limit": self.options.concurrency_limit,
            "periodic": [
                {"cron": p.cron, "timezone": p.timezone, "args": p.args} for p in self.options.periodic
            ],
            "offload": self.options.offload,
            "args_schema": self.args_model.model_json_schema(),
        }


def kind(
    name: str | None = None,
    *,
    queue: str = "default",
    max_attempts: int | None = None,
    timeout_seconds: float | None = None,
    description: str | None = None,
    unique: Unique | None = None,
    concurrency_limit: int | None = None,
    concurrency_key: str | Callable[[dict[str, Any]], str] | None = None,
    periodic: Iterable[Periodic] = (),
    offload: bool = False,
) -> Callable[[F], F]:
    """Mark a function as a job kind named ``name`` (default: the function's name).

    - ``max_attempts`` defaults to the settings' ``default_max_attempts`` when None, and
      ``timeout_seconds`` to no timeout.
    - ``unique`` makes duplicate submissions return the existing job (see ``Unique``).
    - ``concurrency_limit`` caps the jobs of this kind running at once across all replicas,
      per value of the argument named by ``concurrency_key`` (or of a function of the args).
    - ``periodic`` schedules jobs of this kind on cron expressions (see ``Periodic``).
    - ``offload`` runs a sync function in a separate process, for CPU-bound work.

    The function is returned unchanged and can still be called directly.
    """
    if max_attempts is not None and max_attempts < 1:
        raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
    if timeout_seconds is not None and timeout_seconds <= 0:
        raise ValueError(f"timeout_seconds must be positive, got {timeout_seconds}")
    if concurrency_limit is not None and concurrency_limit < 1:
        raise ValueError(f"concurrency_limit must be at least 1, got {concurrency_limit}")
    if concurrency_key is not None and concurrency_limit is None:
        raise ValueError("concurrency_key needs a concurrency_limit")
    options = KindOptions(
        name, queue, max_attempts, timeout_seconds, description, unique,
        concurrency_limit, concurrency_key, tuple(periodic), offload,
    )

    def mark(function: F) -> F:
        setattr(function, _MARK, options)
        return function

    return mark


def build_kind(function: Callable[..., Any], options: KindOptions) -> Kind:
    """Build the ``Kind`` of a marked function; raise ``TypeError`` for an unusable signature."""
    name = options.name or function.__name__
    if not _KIND_NAME.match(name):
        raise TypeError(f"kind name {name!r} must match {_KIND_NAME.pattern}")
    is_async = inspect.iscoroutinefunction(function)
    if options.offload and is_async:
        raise TypeError(f"kind {name!r}: only sync functions can be offloaded to a process")
    if options.offload and "<locals>" in function.__qualname__:
        raise TypeError(f"kind {name!r}: an offloaded function must be defined at module level")
    hints = get_type_hints(function, include_extras=True)
    fields: dict[str, Any] = {}
    context_parameter = None
    for parameter in inspect.signature(function).parameters.values():
        annotation = hints.get(parameter.name, Any)
        if annotation in (JobContext, SyncJobContext):
            expected = JobContext if is_async else SyncJobContext
            if annotation is not expected:
                raise TypeError(
                    f"kind {name!r}: an {'async' if is_async else 'sync'} function takes "
                    f"{expected.__name__}, not {annotation.__name__}"
                )
            context_parameter = parameter.name
            continue
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            raise TypeError(f"kind {name!r}: *args and **kwargs cannot be job arguments")
        if parameter.kind is parameter.POSITIONAL_ONLY:
            raise TypeError(f"kind {name!r}: positional-only parameters cannot be job arguments")
        default = ... if parameter.default is parameter.empty else parameter.default
        fields[parameter.name] = (annotation, default)
    args_model = create_model(  # type: ignore[call-overload]
        f"{name}_args".replace(".", "_").replace(":", "_").replace("-", "_"),
        __config__=ConfigDict(extra="forbid"),
        **fields,
    )
    built = Kind(name, function, is_async, args_model, context_parameter, options)
    for schedule in options.periodic:
        try:
            built.validate_args(schedule.args)
        except ValidationFailed as exc:
            raise TypeError(f"kind {name!r}: periodic args {schedule.args!r}: {exc.errors}") from None
    return built


class Registry:
    """The job kinds registered in this process, by name."""

    def __init__(self, kinds: Iterable[Kind] = ()) -> None:
        self._kinds: dict[str, Kind] = {}
        for item in kinds:
            self.add(item)

    @classmethod
    def from_modules(cls, module_names: Iterable[str]) -> Registry:
        """Import the modules and register every function marked with ``kind`` in them."""
        registry = cls()
        for module_name in dict.fromkeys([BUILTIN_KIND_MODULE, *module_names]):
            module = importlib.import_module(module_name)
            for value in vars(module).values():
                options = getattr(value, _MARK, None)
                if isinstance(options, KindOptions) and callable(value):
                    registry.add(build_kind(value, options))
        return registry

    def add(self, item: Kind) -> None:
        existing = self._kinds.get(item.name)
        if existing is not None and existing.function is not item.function:
            raise ValueError(f"job kind {item.name!r} is defined twice")
        self._kinds[item.name] = item

    def get(self, name: str) -> Kind:
        """Return the kind called ``name``; raise ``UnknownKind`` when there is none."""
        try:
            return self._kinds[name]
        except KeyError:
            raise UnknownKind(
                f"unknown job kind {name!r}; GET /v1/kinds lists the known kinds"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._kinds

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(sorted(self._kinds.values(), key=lambda k: k.name))

    def __len__(self) -> int:
        return len(self._kinds)


def describe_validation(exc: ValidationError, prefix: str) -> list[dict[str, Any]]:
    """Turn pydantic errors into ``{"field", "message"}`` items with dotted field paths."""
    items = []
    for error in exc.errors(include_url=False):
        path = ".".join(str(part) for part in (prefix, *error["loc"]) if part != "")
        items.append({"field": path, "message": error["msg"].removeprefix("Value error, ")})
    return items
