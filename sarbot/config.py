"""The configuration: one TOML file, parsed once at start-up into frozen objects.

Every section and key is documented in ``config.example.toml``.  An unknown key
or a wrong type fails with the key's path and a hint, never a traceback.
"""

from __future__ import annotations

import tomllib
import unicodedata
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sarbot.addresses import normalize_address
from sarbot.config_hints import describe_error
from sarbot.errors import ConfigError
from sarbot.names import covers
from sarbot.oauth_settings import LoginAuth
from sarbot.secretref import ConfigPath, MaybeSecretStr, Secret
from sarbot.store.deadlines import Calendar

M = TypeVar("M", bound=BaseModel)


class Section(BaseModel):
    """A config table: unknown keys are errors and values never change."""

    model_config = ConfigDict(extra="forbid", frozen=True)


ICO = (
    "Information Commissioner's Office, Wycliffe House, Water Lane, Wilmslow, Cheshire SK9 5AF; "
    "telephone 0303 123 1113; https://ico.org.uk/make-a-complaint/"
)


def _require_tls(security: str, allow_plaintext: bool) -> None:
    if security == "none" and not allow_plaintext:
        raise ValueError(
            'security = "none" sends passwords and personal data unencrypted; '
            "set allow_plaintext = true to accept that"
        )


class ControllerSettings(Section):
    name: str = Field(min_length=1)
    email: str
    website: str = ""
    postal_address: str = ""
    privacy_contact: str = ""
    processor_notice: str = ""
    supervisory_authority: str = ICO

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        return normalize_address(value)


class ImapLogin(Section, LoginAuth):
    """How to log in to an IMAP account: the watched mailbox's, or a connector's."""

    host: str = Field(min_length=1)
    port: int = Field(default=993, ge=1, le=65535)
    security: Literal["tls", "starttls", "none"] = "tls"
    username: str = Field(min_length=1)
    password: Secret | None = None
    ca_file: ConfigPath | None = None
    timeout: float = Field(default=60.0, gt=0)
    allow_plaintext: bool = False

    @model_validator(mode="after")
    def _tls_unless_allowed(self) -> ImapLogin:
        _require_tls(self.security, self.allow_plaintext)
        self.check_auth(self.username, self.password, password_required=True)
        return self


class ImapSettings(ImapLogin):
    folder: str = "INBOX"
    processed_folder: str = "GDPR"
    max_message_bytes: int = Field(default=25_000_000, gt=0)
    use_idle: bool = True
    poll_interval: float = Field(default=60.0, gt=0, le=1500)
    check_interval: float | None = Field(default=None, gt=0, le=1500)
    """Without IDLE: how often the server is asked (NOOP) whether mail came.  A cycle runs as
    soon as it has, and at least every ``poll_interval``; None asks every ``poll_interval``."""
    start: Literal["now"] | date = "now"
    """Mail already in the folder when sarbot first watches it is only listed for operators
    ("now"), or only mail that arrived before this date is (a date)."""

    @model_validator(mode="after")
    def _checks_within_a_poll(self) -> ImapSettings:
        if self.check_interval is not None and self.check_interval > self.poll_interval:
            raise ValueError(
                f"check_interval ({self.check_interval:g} s) is longer than poll_interval "
                f"({self.poll_interval:g} s): the mailbox is asked for new mail at least once "
                "a poll"
            )
        return self

    def start_at(self, timezone: str) -> datetime | None:
        """The moment ``start`` names: the date's midnight in ``timezone``; None for "now"."""
        if self.start == "now":
            return None
        return datetime.combine(self.start, time(), ZoneInfo(timezone)).astimezone(UTC)


class SmtpSettings(Section, LoginAuth):
    host: str
    port: int = Field(default=587, ge=1, le=65535)
    security: Literal["starttls", "tls", "none"] = "starttls"
    username: str | None = None
    password: Secret | None = None
    ca_file: ConfigPath | None = None
    timeout: float = Field(default=60.0, gt=0)
    attempts: int = Field(default=3, ge=1, le=20)
    retry_after: float = Field(default=300.0, gt=0)
    allow_plaintext: bool = False

    @model_validator(mode="after")
    def _tls_unless_allowed(self) -> SmtpSettings:
        _require_tls(self.security, self.allow_plaintext)
        self.check_auth(self.username, self.password, password_required=False)
        return self


class RequestSettings(Section):
    subject_phrase: str = Field(default="GDPR DATA REQUEST", min_length=4)
    reference_prefix: str = Field(default="SAR", pattern=r"^[A-Z]{2,10}$")
    confirmation_expiry_days: float = Field(default=14.0, gt=0)
    acks_per_sender_per_day: int = Field(default=3, ge=1)
    acks_per_domain_per_day: int = Field(default=20, ge=1)
    acks_per_hour: int = Field(default=60, ge=1)
    max_confirmation_attempts: int = Field(default=5, ge=1)
    max_confirmation_attempts_per_sender: int = Field(default=10, ge=1)


WEAK_KINDS = frozenset({"ip", "name", "hostname"})
DEFAULT_NEVER_FOLLOW = (
    "admin", "administrator", "root", "user", "guest", "test", "support", "info", "sa",
    "system", "service", "backup", "operator", "webmaster", "postmaster", "nobody", "office",
    "reception", "contact", "hello", "sales", "billing", "accounts", "finance", "enquiries",
    "helpdesk", "hr", "it", "noreply", "no-reply",
)  # fmt: skip


class RecognitionSettings(Section):
    """Finding access requests in other words; ``phrases_file`` adds phrases, one a line."""

    enabled: bool = True
    phrases_file: ConfigPath | None = None


class CollectionSettings(Section):
    strong_identifiers: tuple[str, ...] = ("email", "username")
    max_rounds: int = Field(default=3, ge=1, le=10)
    never_follow: tuple[str, ...] = DEFAULT_NEVER_FOLLOW
    attempts: int = Field(default=3, ge=1, le=10)
    retry_after: float = Field(default=300.0, gt=0)

    @field_validator("strong_identifiers")
    @classmethod
    def _no_weak_kinds(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        weak = sorted(set(value) & WEAK_KINDS)
        if weak:
            raise ValueError(f"{', '.join(weak)} can identify several people and is never followed")
        return value


NAMESPACE = r"^(ad:[^\s\\/@.][^\s\\/@]*|[a-z][a-z0-9_]{0,62}:[a-z][a-z0-9_-]{0,62}(/[^/\s][^/]*)*)$"
"""``ad:DOMAIN`` or ``<connector type>:<connector name>[/<path>]`` (docs/identity.md)."""


class RealmSettings(Section):
    """One ``[[realms]]`` table: namespaces that are the same directory of people."""

    label: str = Field(min_length=1, max_length=200)
    same_as: tuple[Annotated[str, Field(pattern=NAMESPACE)], ...] = Field(min_length=2)

    @field_validator("same_as")
    @classmethod
    def _distinct(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError("a namespace is listed twice")
        if any(member.startswith("ad:") and "/" in member for member in value):
            raise ValueError("a Windows domain is written ad:NAME, without /")
        if not any(not member.startswith("ad:") for member in value):
            raise ValueError("a realm needs a connector's namespace, not only Windows domains")
        return value


class VerificationSettings(Section):
    mode: Literal["reply", "reply_or_dmarc", "manual"] = "reply"
    trusted_authserv_ids: tuple[str, ...] = ()
    alignment: Literal["relaxed", "strict"] = "relaxed"
    verify_dkim: bool = False
    dns_server: str | None = Field(default=None, pattern=r"^[0-9A-Za-z.:\[\]-]+(:\d+)?$")

    @model_validator(mode="after")
    def _evidence_for_dmarc(self) -> VerificationSettings:
        if self.mode == "reply_or_dmarc" and not (self.trusted_authserv_ids or self.verify_dkim):
            raise ValueError(
                'mode "reply_or_dmarc" needs trusted_authserv_ids or verify_dkim = true, '
                "or no message could ever be authenticated"
            )
        return self


class DeadlineSettings(Section):
    country: str = "GB"
    subdivision: str = "ENG"
    timezone: str = "Europe/London"
    bank_holidays: bool = True

    def calendar(self) -> Calendar:
        """The working-day calendar deadlines are counted in."""
        if not self.bank_holidays:
            return Calendar.weekends_only(self.timezone)
        return Calendar(self.country, self.subdivision or None, self.timezone)

    @model_validator(mode="after")
    def _valid_calendar(self) -> DeadlineSettings:
        self.calendar()  # raises ValueError naming what is unknown
        return self


class NotificationSettings(Section):
    operators: tuple[str, ...] = ()
    deadline_warning_days: int = Field(default=7, ge=1)
    connector_failures: int = Field(default=3, ge=1)
    digest_hour: int = Field(default=8, ge=0, le=23)
    remind_days_before_expiry: float = Field(default=3.0, gt=0)

    @field_validator("operators")
    @classmethod
    def _addresses(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(normalize_address(address) for address in value)


class RetentionSettings(Section):
    requests_days: float = Field(default=6 * 365, gt=0)
    processed_mail_days: float = Field(default=6 * 365, gt=0)


class MetricsSettings(Section):
    """``[metrics]``: the Prometheus endpoint and ``/healthz``; off unless enabled."""

    enabled: bool = False
    host: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(default=9464, ge=1, le=65535)
    stale_after: float = Field(default=300.0, gt=0)

    def threshold(self, poll_interval: float) -> float:
        """Seconds without a successful poll (or IMAP session) before sarbot is unhealthy.

        Never less than three poll intervals: an IDLE wait lasts a whole interval.
        """
        return max(self.stale_after, 3 * poll_interval)


class StorageSettings(Section):
    database_url: MaybeSecretStr
    export_dir: ConfigPath
    keep_exports_days: float = Field(default=0, ge=0)


class ExportSettings(Section):
    template_dir: ConfigPath | None = None
    max_attachment_bytes: int = Field(default=20_000_000, ge=100_000)


class LoggingSettings(Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class SourceFacts(Section):
    """What UK GDPR Article 15(1) asks to be told about one source of data."""

    purposes: str = ""
    lawful_basis: str = ""
    categories: tuple[str, ...] = ()
    recipients: tuple[str, ...] = ()
    retention: str = ""
    origin: str = ""
    automated_decisions: str = "None: no decision about you is made by automated means."
    transfers: str = ""


class ConnectorEntry(BaseModel):
    """One ``[[connectors]]`` table.  Its other keys belong to the connector type."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,62}$")
    type: str
    enabled: bool = True
    description: str = ""
    facts: SourceFacts = SourceFacts()

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Settings(Section):
    controller: ControllerSettings
    imap: ImapSettings
    smtp: SmtpSettings
    storage: StorageSettings
    requests: RequestSettings = RequestSettings()
    recognition: RecognitionSettings = RecognitionSettings()
    verification: VerificationSettings = VerificationSettings()
    deadlines: DeadlineSettings = DeadlineSettings()
    notifications: NotificationSettings = NotificationSettings()
    retention: RetentionSettings = RetentionSettings()
    collection: CollectionSettings = CollectionSettings()
    export: ExportSettings = ExportSettings()
    logging: LoggingSettings = LoggingSettings()
    metrics: MetricsSettings = MetricsSettings()
    connectors: tuple[ConnectorEntry, ...] = ()
    realms: tuple[RealmSettings, ...] = ()

    @field_validator("realms")
    @classmethod
    def _realms_apart(cls, value: tuple[RealmSettings, ...]) -> tuple[RealmSettings, ...]:
        """A namespace in two realms would join them: each belongs to one at most."""
        seen: dict[str, str] = {}
        for realm in value:
            for member in realm.same_as:
                if member.startswith("ad:"):
                    continue  # a domain name may be in several realms: it joins nothing
                key = unicodedata.normalize("NFC", member)
                other = next((o for m, o in seen.items() if covers(m, key) or covers(key, m)), None)
                if other is not None:
                    raise ValueError(f"'{member}' is in realm '{other}' too")
                seen[key] = realm.label
        labels = [realm.label for realm in value]
        if len(set(labels)) != len(labels):
            raise ValueError("realm labels must be unique")
        return value

    @field_validator("connectors")
    @classmethod
    def _unique_names(cls, value: tuple[ConnectorEntry, ...]) -> tuple[ConnectorEntry, ...]:
        names = [entry.name for entry in value]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"connector names must be unique: {', '.join(duplicates)}")
        return value

    @property
    def message_id_domain(self) -> str:
        """The domain of every Message-ID sarbot writes."""
        return self.controller.email.rpartition("@")[2]


def load_settings(path: Path) -> Settings:
    """Read and validate the config file, or raise ConfigError saying what is wrong."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return validate(data, Settings, source=str(path), base_dir=path.parent.resolve())


def validate(data: Any, model: type[M], *, source: str, base_dir: Path, prefix: str = "") -> M:
    """Validate data against a settings model, turning errors into ConfigError."""
    try:
        return model.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        lines = [describe_error(err, model, prefix) for err in exc.errors()]
        raise ConfigError(f"{source}: invalid config\n" + "\n".join(lines)) from None
