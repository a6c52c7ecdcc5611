"""Which id tags may charge: the central system's answer to Authorize, StartTransaction and TransactionEvent.

A charger asks the central system about the id tag (1.6 ``idTag``, 2.0.1 ``idToken.idToken``) a driver
presented: in Authorize, and again in 1.6 StartTransaction / StopTransaction and in the 2.0.1
TransactionEvent that names one. :class:`IdTagPolicy` answers, in one of three modes:

* ``accept_all`` (the default, and what the central system always did): every tag is Accepted;
* ``allow_list``: the tags in ``allow`` are Accepted, every other tag is unknown;
* ``local_list``: each tag in ``tags`` has its status (Accepted, Blocked, Expired or Invalid) and an
  optional ``expiry`` (an Accepted tag whose expiry has passed is Expired; before that the expiry is
  sent along, as 1.6 ``idTagInfo.expiryDate`` / 2.0.1 ``idTokenInfo.cacheExpiryDateTime``, so the
  charger does not cache the tag beyond it); every other tag is unknown.

"Unknown" is a word of 2.0.1 (``Unknown``); 1.6 has none and answers ``Invalid`` (what OCTT expects,
TC_023_1_CSMS; 2.0.1 TC_C_02_CSMS accepts Invalid or Unknown). Tags are compared without regard to
case: 1.6 ``idTag`` is a CiString20 and 2.0.1 says an idToken "is case insensitive".

The tag the central system itself sent in a RemoteStartTransaction / RequestStartTransaction to a charge
point is Accepted from that charge point whatever the mode (the charger may authorize it before it
starts, 1.6 ``AuthorizeRemoteTxRequests``): the central system started that session itself.

In a site file the policy is the ``[ocpp.authorize]`` table (:class:`AuthorizeConfig`)::

    [ocpp.authorize]
    mode = "local_list"
    tags = [
        { id_tag = "04A2B3C4D5", status = "Accepted", expiry = "2027-01-01T00:00:00Z" },
        { id_tag = "DEADBEEF", status = "Blocked" },
    ]
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Annotated, Any, Iterable, Literal, Mapping

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from .timestamps import ocpp_timestamp

__all__ = ["AuthorizeConfig", "IdTagConfig", "IdTagPolicy", "TagDecision", "MODES", "STATUSES"]

MODES = ("accept_all", "allow_list", "local_list")
#: The statuses a tag of the local list can have (names common to 1.6 and 2.0.1).
STATUSES = ("Accepted", "Blocked", "Expired", "Invalid")

_IdTag = Annotated[str, Field(min_length=1, max_length=36)]  # 1.6 idTag: 20 characters, 2.0.1 idToken: 36


class _Strict(BaseModel):
    # As runtime.config.models.Strict (which this layer cannot import): unknown keys and loose types are errors.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class IdTagConfig(_Strict):
    """One tag of the local list: its status and, optionally, when it expires (with a time zone)."""

    id_tag: _IdTag
    status: Literal["Accepted", "Blocked", "Expired", "Invalid"] = "Accepted"
    #: An RFC 3339 string ("2027-01-01T00:00:00Z") or a TOML date-time with an offset.
    expiry: Annotated[AwareDatetime, Field(strict=False)] | None = None


class AuthorizeConfig(_Strict):
    """The ``[ocpp.authorize]`` table of a site file (see the module docstring)."""

    mode: Literal["accept_all", "allow_list", "local_list"] = "accept_all"
    allow: list[_IdTag] = []
    tags: list[IdTagConfig] = []

    @model_validator(mode="after")
    def _consistent(self) -> "AuthorizeConfig":
        if self.mode == "allow_list" and not self.allow:
            raise ValueError("mode 'allow_list' needs the tags to accept in allow = [...]")
        if self.mode == "local_list" and not self.tags:
            raise ValueError("mode 'local_list' needs its tags in tags = [{ id_tag = ..., status = ... }, ...]")
        if self.allow and self.mode != "allow_list":
            raise ValueError(f"allow is used with mode = 'allow_list' only (mode is {self.mode!r})")
        if self.tags and self.mode != "local_list":
            raise ValueError(f"tags is used with mode = 'local_list' only (mode is {self.mode!r})")
        seen: set[str] = set()
        for tag in [*self.allow, *(t.id_tag for t in self.tags)]:
            if tag.casefold() in seen:
                raise ValueError(f"id tag {tag!r} is listed twice (tags are compared without regard to case)")
            seen.add(tag.casefold())
        return self


@dataclass(frozen=True)
class TagDecision:
    """The answer about one tag: ``status`` is Accepted, Blocked, Expired, Invalid or Unknown (the last
    one: not listed); ``expiry`` is sent along with an Accepted tag that has one."""

    status: str
    expiry: datetime | None = None

    def id_tag_info_16(self) -> dict[str, Any]:
        """1.6 ``idTagInfo`` (snake_case, as the ``ocpp`` library takes it): Unknown becomes Invalid."""
        info: dict[str, Any] = {"status": "Invalid" if self.status == "Unknown" else self.status}
        if self.expiry is not None and self.status == "Accepted":
            info["expiry_date"] = ocpp_timestamp(self.expiry)
        return info

    def id_token_info_201(self) -> dict[str, Any]:
        """2.0.1 ``idTokenInfo`` (snake_case)."""
        info: dict[str, Any] = {"status": self.status}
        if self.expiry is not None and self.status == "Accepted":
            info["cache_expiry_date_time"] = ocpp_timestamp(self.expiry)
        return info


class IdTagPolicy:
    """Answers "may this tag charge?" (see the module docstring). Build it with :meth:`from_config` or
    directly: ``IdTagPolicy("allow_list", allow=["TAG1"])``,
    ``IdTagPolicy("local_list", tags=[{"id_tag": "T", "status": "Blocked"}])``."""

    def __init__(self, mode: str = "accept_all", *, allow: Iterable[str] = (),
                 tags: Iterable[IdTagConfig | Mapping[str, Any]] = ()) -> None:
        config = AuthorizeConfig.model_validate(
            {"mode": mode, "allow": list(allow), "tags": [t if isinstance(t, IdTagConfig) else IdTagConfig(**t)
                                                          for t in tags]}, strict=False)
        self.mode = config.mode
        self._allow = frozenset(t.casefold() for t in config.allow)
        self._tags = {t.id_tag.casefold(): t for t in config.tags}

    @classmethod
    def from_config(cls, config: AuthorizeConfig | Mapping[str, Any] | None) -> "IdTagPolicy":
        if config is None:
            return cls()
        if isinstance(config, Mapping):
            config = AuthorizeConfig.model_validate(dict(config), strict=False)
        return cls(config.mode, allow=config.allow, tags=config.tags)

    def __repr__(self) -> str:
        size = len(self._allow) if self.mode == "allow_list" else len(self._tags)
        return f"<IdTagPolicy {self.mode}{'' if self.mode == 'accept_all' else f', {size} tags'}>"

    def decide(self, id_tag: str, now: datetime | None = None) -> TagDecision:
        """The status of ``id_tag`` at ``now`` (default: the current UTC time)."""
        if self.mode == "accept_all":
            return TagDecision("Accepted")
        key = id_tag.casefold()
        if self.mode == "allow_list":
            return TagDecision("Accepted" if key in self._allow else "Unknown")
        entry = self._tags.get(key)
        if entry is None:
            return TagDecision("Unknown")
        if entry.status == "Accepted" and entry.expiry is not None:
            if entry.expiry <= (now or datetime.now(timezone.utc)):
                return TagDecision("Expired")
            return TagDecision("Accepted", entry.expiry)
        return TagDecision(entry.status)
