"""Facilities and their settings (API.md, "Facility settings"), validated as a whole."""

from __future__ import annotations

from datetime import datetime
from functools import cache
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from common.errors import Refused
from server.errors import not_found
from server.schema import facilities
from store import Record
from store.ids import new_id

Keyword = Annotated[str, Field(min_length=1, max_length=64)]
Price = Annotated[int, Field(ge=0, le=100_000)]
HHMM = Annotated[str, Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")]


def has_nul(value: Any) -> bool:
    """Whether a string anywhere in `value` holds U+0000, which PostgreSQL cannot store."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(has_nul(k) or has_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(has_nul(v) for v in value)
    return False


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    @field_validator("*")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        # Every request body (HTTP or WebSocket) is a Strict model: no name, email, message
        # or setting needs a NUL, and one would fail in PostgreSQL rather than here.
        if has_nul(value):
            raise ValueError("text may not contain NUL (U+0000) characters")
        return value


class Prices(Strict):
    message: Price = 50
    photo: Price = 100
    visit_minute: Price = 50


class VisitHours(Strict):
    start: HHMM = "08:00"
    end: HHMM = "21:00"

    @model_validator(mode="after")
    def _ordered(self) -> VisitHours:
        if self.start >= self.end:
            raise ValueError("visiting hours must start before they end")
        return self


RETENTION_DAYS_DEFAULT = 90  # recording_retention_days


class FacilitySettings(Strict):
    review_mode: Literal["instant", "hold"] = "instant"
    review_photos: bool = True
    keywords: list[Keyword] = Field(default_factory=list, max_length=500)
    visit_block_minutes: Literal[15, 30] = 30
    visit_hours: VisitHours = Field(default_factory=VisitHours)
    kiosks: int = Field(default=4, ge=1, le=1000)
    booking_horizon_days: int = Field(default=14, ge=1, le=365)
    cancel_cutoff_minutes: int = Field(default=60, ge=0, le=10_080)
    prices: Prices = Field(default_factory=Prices)
    media: Literal["direct", "relay"] = "direct"
    record_visits: bool = True
    # Staff only (not in PUBLIC_SETTINGS): days a recording is kept after its visit ends.
    recording_retention_days: int = Field(default=RETENTION_DAYS_DEFAULT, ge=1, le=3650)

    @field_validator("keywords")
    @classmethod
    def _normalise(cls, words: list[str]) -> list[str]:
        return sorted({w.strip().lower() for w in words if w.strip()})


# What a family member or a person may see; the keyword watch list stays with the staff.
PUBLIC_SETTINGS = ("review_mode", "visit_block_minutes", "visit_hours", "booking_horizon_days",
                   "cancel_cutoff_minutes", "prices", "media", "record_visits")


@cache
def iana_zones() -> frozenset[str]:
    """The IANA zone names this host knows, read once: the listing walks the whole tz folder
    (34 ms on this host, on the event loop, for every facility created and every statement
    asked for in a zone). A new tzdata takes a restart, as the zones' rules already do."""
    return frozenset(available_timezones())


def check_timezone(name: str) -> str:
    try:
        ZoneInfo(name)
    # With the `tzdata` package installed, a folder of it ("America") raises IsADirectoryError.
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise Refused("invalid_timezone", f"{name!r} is not an IANA time zone") from None
    # "localtime" is listed on some hosts (a link to /etc/localtime): the server's zone, not IANA.
    if name not in iana_zones() or name == "localtime":
        raise Refused("invalid_timezone", f"{name!r} is not an IANA time zone")
    return name


def merged_settings(current: dict[str, Any], patch: dict[str, Any]) -> FacilitySettings:
    merged = dict(current)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    try:
        return FacilitySettings.model_validate(merged)
    except ValidationError as exc:
        problems = [{"field": ".".join(str(p) for p in err["loc"]), "problem": plain(err)}
                    for err in exc.errors()[:20]]
        raise Refused("invalid_settings", problems[0]["problem"], fields=problems) from None


# What the staff console calls each setting, for errors a person reads beside the field.
LABELS = {
    "review_mode": "Message review", "review_photos": "Hold photos for review",
    "keywords": "Watched words", "visit_block_minutes": "The visit block",
    "visit_hours": "Visiting hours", "visit_hours.start": "Visiting from",
    "visit_hours.end": "Visiting until", "kiosks": "Kiosks",
    "booking_horizon_days": "The booking horizon", "cancel_cutoff_minutes": "The cancel cut-off",
    "prices.message": "The message price", "prices.photo": "The photo price",
    "prices.visit_minute": "The visit minute price", "media": "Visit media",
    "record_visits": "Record relayed visits", "prices": "Prices",
}


def plain(err: Any) -> str:
    """One pydantic error in words for an officer, not pydantic's own text."""
    loc = [str(p) for p in err["loc"]]
    field = ".".join(loc)
    label = LABELS.get(field) or field.replace("_", " ")
    if loc[0] == "keywords" and len(loc) > 1:
        label = "A watched word"
    ctx, kind = err.get("ctx") or {}, err["type"]
    if kind == "extra_forbidden":
        return f"{field.replace('_', ' ').capitalize()} is not a setting."
    if kind == "missing":
        return f"{label} is required."
    if kind == "greater_than_equal":
        return f"{label} must be at least {ctx['ge']}."
    if kind == "less_than_equal":
        return f"{label} must be at most {ctx['le']}."
    if kind == "literal_error":
        return f"{label} must be one of {ctx['expected']}."
    if kind == "string_pattern_mismatch":
        return f"{label} must be a time of day such as 08:00."
    if kind in ("too_long", "string_too_long"):
        return f"{label} is too long (at most {ctx.get('max_length')})."
    if kind == "string_too_short":
        return f"{label} may not be empty."
    if kind.startswith("int") or kind.startswith("bool") or kind.endswith("_type"):
        want = {"int": "a whole number", "bool": "yes or no", "str": "text",
                "list": "a list", "dict": "a group of settings",
                "model": "a group of settings"}
        return f"{label} must be {want.get(kind.split('_')[0], 'another kind of value')}."
    if kind == "value_error":
        message = str(ctx.get("error") or err["msg"])
        return message[:1].upper() + message[1:] + ("" if message.endswith(".") else ".")
    return f"{label}: {err['msg']}."


def public_view(row: Record, *, full: bool) -> dict[str, Any]:
    settings = row.settings if full else {k: row.settings[k] for k in PUBLIC_SETTINGS}
    return {"id": row.id, "name": row.name, "timezone": row.timezone, "settings": settings}


async def create(conn: AsyncConnection, *, name: str, timezone: str,
                 settings: dict[str, Any], now: datetime) -> Record:
    checked = merged_settings(FacilitySettings().model_dump(), settings)
    facility_id = new_id("fac")
    await conn.execute(facilities.insert().values(
        id=facility_id, name=name, timezone=check_timezone(timezone),
        settings=checked.model_dump(), created_at=now, updated_at=now))
    return await get(conn, facility_id)


async def get(conn: AsyncConnection, facility_id: str) -> Record:
    row = (await conn.execute(select(facilities).where(facilities.c.id == facility_id))).first()
    if row is None:
        raise not_found("The facility")
    return row


async def update(conn: AsyncConnection, facility_id: str, *, patch: dict[str, Any],
                 name: str | None, timezone: str | None, now: datetime) -> Record:
    row = await get(conn, facility_id)
    values: dict[str, Any] = {"updated_at": now,
                              "settings": merged_settings(row.settings, patch).model_dump()}
    if name is not None:
        values["name"] = name
    if timezone is not None:
        values["timezone"] = check_timezone(timezone)
    await conn.execute(facilities.update().where(facilities.c.id == facility_id).values(**values))
    return await get(conn, facility_id)


async def listing(conn: AsyncConnection, only: str | None = None) -> list[Any]:
    query = select(facilities).order_by(facilities.c.name, facilities.c.id)
    if only is not None:
        query = query.where(facilities.c.id == only)
    return list(await conn.execute(query))
