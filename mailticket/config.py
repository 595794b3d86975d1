"""`mailticket.toml` into frozen dataclasses: the schema, its defaults, and clear errors.

Every option is declared here once, with its default, so a minimal (even empty)
file works.  An unknown key, a wrong type or a bad value raises `ConfigError`
naming the file and the key (`mailticket.toml: [smtp] max_size: expected an
integer, got "big"`).  Relative paths are resolved against the folder of the
config file, so a helpdesk folder can be moved as a whole.

Secrets never live in the file itself: `password_env` / `password_file` name
where to read them (STYLE.md 11).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import ConfigError
from .states import PRIORITIES

_Section = typing.TypeVar(
    "_Section", "Outgoing", "Paths", "Smtp", "Imap", "Agents", "OAuth"
)  # _resolve's sections

DEFAULT_PATH = "mailticket.toml"
_LEGACY: dict[tuple, typing.Any] = {}  # Config.calendar's "default" calendars, by their settings
ENV_VAR = "MAILTICKET_CONFIG"


@dataclass(frozen=True)
class Helpdesk:
    name: str = "Support"
    # The customer-facing address: acknowledgements and agent replies go out from it.
    address: str = "support@example.com"
    # Other addresses that are ours (aliases): mail from them is a loop, never a customer.
    aliases: tuple[str, ...] = ()
    # The subject token; `{number}` is the ticket number.
    token: str = "[#{number}]"
    timezone: str = "UTC"
    language: str = "en"  # used when a message's language cannot be told
    languages: tuple[str, ...] = ("en", "fr", "nl")
    # At most this many automatic mails (acknowledgements, ...) per address per hour,
    # per recipient domain per hour (a helpdesk elsewhere that answers from a new address
    # each time loops through one domain), and in all per hour.
    auto_reply_limit: int = 5
    # A domain's limit must leave room for a big mail provider's many customers
    # (gmail.com): it is a safety net, replies to our own mail from strangers are never
    # acknowledged in the first place.
    auto_reply_limit_domain: int = 100
    auto_reply_limit_total: int = 1000

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2] or "localhost"


@dataclass(frozen=True)
class Database:
    url: str = "sqlite:///var/mailticket.db"

    @property
    def is_sqlite(self) -> bool:
        """SQLite (one daemon, a writer lock) rather than PostgreSQL (row locks)."""
        return self.url.startswith("sqlite:")


@dataclass(frozen=True)
class Smtp:
    listen: str = "127.0.0.1:2525"
    lmtp: bool = False
    # Recipients accepted: any address in these domains, plus these addresses.
    # Both empty means: the helpdesk address and its aliases only (never an open relay).
    domains: tuple[str, ...] = ()
    addresses: tuple[str, ...] = ()
    max_size: int = 25 * 1024 * 1024
    tls_cert: str = ""
    tls_key: str = ""
    # Clients at once, overall and per client address; past them a client gets 421.
    # Well under the usual 1,024 open files (the listener also lowers it to fit).
    # With `listen = "unix:/path"`: the socket's mode (octal) and owner ("user" or
    # "user:group"; empty: the daemon's own), so that the MTA's delivery agent may connect.
    socket_mode: str = "0660"
    socket_owner: str = ""
    max_connections: int = 200
    max_connections_per_ip: int = 20
    # Seconds of silence before a client gets 421 and is closed (RFC 5321 4.5.3.2.7);
    # also the wait between blocks of a message, whose DATA must keep a minimum rate.
    idle_timeout: int = 300


@dataclass(frozen=True)
class Imap:
    host: str = "localhost"
    port: int = 993
    tls: str = "tls"  # tls | starttls | none
    user: str = ""
    # "password", or SASL "xoauth2" / "oauthbearer" with the tokens of [oauth.NAME] `oauth`.
    auth: str = "password"
    oauth: str = ""
    password_env: str = ""
    password_file: str = ""
    folder: str = "INBOX"
    processed_folder: str = ""  # empty: flag as \Seen instead of moving
    queue: str = ""
    idle: bool = True
    poll_interval: int = 60
    # Mail older than this many days when a mailbox is first connected is imported
    # without acknowledgements ("import") or left alone ("skip").
    history_days: int = 7
    history: str = "import"


@dataclass(frozen=True)
class Outgoing:
    transport: str = "folder"  # folder | smtp
    folder: str = "var/outgoing"
    host: str = "localhost"
    port: int = 25
    starttls: bool = False
    implicit_tls: bool = False  # TLS from the first byte (port 465, RFC 8314)
    # TLS checks the smarthost's certificate and name against the system's CAs, or this
    # file (PEM) for a private CA; tls_verify = false turns the checks off.
    tls_ca_file: str = ""
    tls_verify: bool = True
    username: str = ""
    auth: str = "password"  # password | xoauth2 | oauthbearer (with [oauth.NAME] `oauth`)
    oauth: str = ""
    password_env: str = ""
    password_file: str = ""
    max_attempts: int = 8
    retry_base_seconds: int = 60


@dataclass(frozen=True)
class OAuth:
    """[oauth.NAME]: where a mailbox's OAuth2 tokens come from (oauth.py)."""

    provider: str = "custom"  # microsoft | google | custom
    client_id: str = ""
    # The client secret, if the app registration has one (Google's always do).
    client_secret_env: str = ""
    client_secret_file: str = ""
    tenant: str = "common"  # microsoft: the directory (tenant) id, or "organizations"
    scopes: tuple[str, ...] = ()  # empty: the provider's scopes for IMAP and SMTP
    # The refresh token, written by `mailticket oauth login` (mode 0600); empty:
    # var/oauth/NAME.json beside the config.
    token_file: str = ""
    # The provider's endpoints; empty: the provider's own (custom needs them).
    token_url: str = ""
    device_url: str = ""
    auth_url: str = ""


@dataclass(frozen=True)
class Paths:
    rules: str = "rules"
    templates: str = "templates"  # a site's overrides; the shipped templates are the fallback
    attachments: str = "var/attachments"


@dataclass(frozen=True)
class Sla:
    # Per priority, in minutes: first response, then an update at least this often, resolution.
    first_response: dict[str, int] = field(
        default_factory=lambda: {"P1": 30, "P2": 60, "P3": 480, "P4": 2880}
    )
    update_interval: dict[str, int] = field(
        default_factory=lambda: {"P1": 60, "P2": 240, "P3": 1440, "P4": 4320}
    )
    resolution: dict[str, int] = field(
        default_factory=lambda: {"P1": 240, "P2": 1440, "P3": 4320, "P4": 20160}
    )

    # The calendar SLA clocks count in, and the rules' `business_hours` ask: a
    # [calendars.NAME]; empty: the one these three keys make (named "default").
    calendar: str = ""
    business_days: str = "mon-fri"
    business_hours: str = "08:00-18:00"
    holidays: str = ""  # ISO 3166 country code for public holidays, e.g. "BE"; empty: none
    # The assignee is warned when this share (percent) of a timer's time is left.
    warning: int = 20
    # A ticket pending (waiting on the customer) this many days gets one reminder; after
    # autoresolve_days more it is resolved.  0 turns either off.
    reminder_days: int = 3
    autoresolve_days: int = 4
    # A customer's reply within this many days reopens a resolved ticket; after them it
    # is closed (a later reply opens a new ticket linked to it).
    reopen_days: int = 7
    tiers: int = 3  # escalation goes from tier 1 up to this one
    # Named policies overriding any of the above per priority (and `calendar`, `warning`):
    # [sla.policies.gold] first_response = {P1 = 15}.  A queue or a rule (`sla: gold`) picks one.
    policies: dict[str, Policy] = field(default_factory=dict)


@dataclass(frozen=True)
class Policy:
    """[sla.policies.NAME]: what it sets; the rest comes from [sla]."""

    first_response: dict[str, int] = field(default_factory=dict)
    update_interval: dict[str, int] = field(default_factory=dict)
    resolution: dict[str, int] = field(default_factory=dict)
    calendar: str = ""
    warning: int = 0  # 0: [sla]'s


@dataclass(frozen=True)
class Queue:
    """[queues.NAME]: the calendar and SLA policy of a queue's tickets."""

    calendar: str = ""
    sla: str = ""


@dataclass(frozen=True)
class Agents:
    # signed: an agent's mail needs a proof (auth.py); none: mail never acts as an agent.
    auth: str = "signed"
    # The signing secret: this environment variable when set, else this file (auth.secret).
    secret_env: str = "MAILTICKET_AGENT_SECRET"
    secret_file: str = ""
    # The receiving MTA's authserv-id whose Authentication-Results we trust (DKIM or
    # DMARC aligned with the agent's domain stands in for a signature); empty: none.
    authserv_id: str = ""
    reply_days: int = 30  # days a signed reply address stays valid
    # Automatic mails (notifications, confirmations, warnings) per agent per hour, at
    # most; they do not count against [helpdesk]'s limits for customers.
    notification_limit: int = 100


@dataclass(frozen=True)
class Surveys:
    # A satisfaction survey to the customer when an agent resolves a ticket (surveys.py).
    enabled: bool = True
    scale: str = "1-5"  # 1-5 | good-bad (stored as 5 good, 1 bad)
    # At most one survey per customer in this many days (0: one per resolution).
    period_days: int = 30
    # A rating at or below this is low (good-bad: "bad" is low unless 0): the assignee
    # and the queue's lead are told; 0: no rating is low.
    low: int = 2
    reopen_on_low: bool = False  # a low rating also reopens the ticket


@dataclass(frozen=True)
class Report:
    # `mailticket report` mailed to these addresses (the HTML report attached); empty: not mailed.
    mail_to: tuple[str, ...] = ()
    every_days: int = 7  # the period it covers and its rhythm; 7: weekly, on `weekday`
    weekday: str = "mon"
    hour: int = 7  # o'clock in [helpdesk] timezone
    by: str = "queue"  # queue | priority | channel | agent | tier


@dataclass(frozen=True)
class Daemon:
    # /healthz and /metrics; empty turns the endpoint off. Loopback by default.
    http: str = "127.0.0.1:8025"
    # Seconds between outbox runs (retries fall due on their own schedule).
    outbox_interval: int = 5
    # Seconds between passes of the timed jobs (SLA, updates, reminders, closing).
    tick_interval: int = 60
    # Seconds SIGTERM waits for in-flight work before giving up.
    drain_seconds: int = 30
    log_format: str = "text"  # text | json
    # This daemon's name in leases and /healthz; empty: HOST:PID.
    name: str = ""
    # Seconds after which an IMAP mailbox held by a daemon that stopped renewing it
    # (killed, cut off) is taken over by another daemon on the same database.
    lease_seconds: int = 30


@dataclass(frozen=True)
class Config:
    helpdesk: Helpdesk = field(default_factory=Helpdesk)
    database: Database = field(default_factory=Database)
    smtp: Smtp = field(default_factory=Smtp)
    imap: tuple[Imap, ...] = ()
    outgoing: Outgoing = field(default_factory=Outgoing)
    paths: Paths = field(default_factory=Paths)
    sla: Sla = field(default_factory=Sla)
    agents: Agents = field(default_factory=Agents)
    daemon: Daemon = field(default_factory=Daemon)
    surveys: Surveys = field(default_factory=Surveys)
    report: Report = field(default_factory=Report)
    # [calendars.NAME] tables, parsed (calendars.parse); and [queues.NAME].
    calendars: dict[str, typing.Any] = field(default_factory=dict)
    queues: dict[str, Queue] = field(default_factory=dict)
    oauth: dict[str, OAuth] = field(default_factory=dict)  # [oauth.NAME]
    # Where the file was read from; relative paths were resolved against its folder.
    path: str = ""

    def business_hours(self):
        """The helpdesk's calendar: [sla] calendar, or the one [sla] business_* make."""
        return self.calendar(self.sla.calendar)

    def calendar(self, name: str):
        """The calendar called `name` ("" or "default": [sla]'s business_* keys)."""
        from . import calendars

        if name and name != "default":
            return self.calendars[name]
        key = (
            self.sla.business_days,
            self.sla.business_hours,
            self.helpdesk.timezone,
            self.sla.holidays or None,
        )
        if key not in _LEGACY:  # built once: its holidays and days are cached inside it
            _LEGACY[key] = calendars.from_legacy(*key)
        return _LEGACY[key]

    def our_addresses(self) -> frozenset[str]:
        """Every address that is the helpdesk itself (lower-case)."""
        return frozenset(
            a.lower() for a in (self.helpdesk.address, *self.helpdesk.aliases, *self.smtp.addresses)
        )

    def is_ours(self, address: str) -> bool:
        """Is this address the helpdesk itself (mail from it is our own, a loop)?

        Only the configured addresses: accepting every recipient in a domain says
        nothing about its senders (staff of an internal helpdesk write from it).
        """
        return address.lower() in self.our_addresses()

    def accepts(self, recipient: str) -> bool:
        """Is mail to `recipient` for us (the listener's RCPT, `ingest --recipient`)?

        Our addresses with any plus tag, any address in `[smtp] domains`, and postmaster at any of our
        domains or bare (RFC 5321 4.5.1 requires it).  Anything else would make us an
        open relay.
        """
        address = recipient.strip().strip("<>").lower()
        local, _, domain = address.rpartition("@")
        if not local:  # the bare <postmaster>
            return domain == "postmaster"
        # Subaddressing (RFC 5233): support+tag@ is support@ (auth.py signs such tags).
        base = local.partition("+")[0]
        if f"{base}@{domain}" in self.our_addresses() or domain in self.our_domains():
            return True
        return local == "postmaster" and domain in self.our_domains(with_addresses=True)

    def our_domains(self, with_addresses: bool = False) -> frozenset[str]:
        """`[smtp] domains`, and with `with_addresses` the domains of our own addresses too."""
        domains = {d.lower() for d in self.smtp.domains}
        if with_addresses:
            domains |= {a.rpartition("@")[2] for a in self.our_addresses()}
        return frozenset(domains)


_CHOICES = {
    ("outgoing", "transport"): ("folder", "smtp"),
    ("imap", "tls"): ("tls", "starttls", "none"),
    ("imap", "history"): ("import", "skip"),
    ("imap", "auth"): ("password", "xoauth2", "oauthbearer"),
    ("outgoing", "auth"): ("password", "xoauth2", "oauthbearer"),
    ("oauth", "provider"): ("microsoft", "google", "custom"),
    ("agents", "auth"): ("signed", "none"),
    ("daemon", "log_format"): ("text", "json"),
    ("report", "weekday"): ("mon", "tue", "wed", "thu", "fri", "sat", "sun"),
    ("report", "by"): ("queue", "priority", "channel", "agent", "tier"),
    ("surveys", "scale"): ("1-5", "good-bad"),
}
# Numbers that must fall in a range (low, high; None: no bound), checked like _CHOICES.
_PORT = (1, 65535)
_RANGES: dict[tuple[str, str], tuple[int | None, int | None]] = {
    ("imap", "port"): _PORT,
    ("outgoing", "port"): _PORT,
    ("outgoing", "max_attempts"): (1, None),
    ("outgoing", "retry_base_seconds"): (1, None),
    ("smtp", "max_size"): (1024, None),
    ("smtp", "max_connections"): (1, None),
    ("smtp", "max_connections_per_ip"): (1, None),
    ("smtp", "idle_timeout"): (1, None),
    ("imap", "poll_interval"): (1, None),
    ("daemon", "outbox_interval"): (1, None),
    ("daemon", "tick_interval"): (1, None),
    ("daemon", "drain_seconds"): (1, None),
    ("daemon", "lease_seconds"): (3, None),
    ("agents", "reply_days"): (1, None),
    ("agents", "notification_limit"): (1, None),
    ("report", "every_days"): (1, 366),
    ("report", "hour"): (0, 23),
    ("sla", "warning"): (0, 99),
    ("sla", "tiers"): (1, 3),
    ("sla", "reopen_days"): (1, None),
    ("surveys", "low"): (0, 4),
}
_PATH_KEYS = {
    ("outgoing", "folder"),
    ("paths", "rules"),
    ("paths", "templates"),
    ("paths", "attachments"),
    ("smtp", "tls_cert"),
    ("smtp", "tls_key"),
    ("imap", "password_file"),
    ("outgoing", "password_file"),
    ("outgoing", "tls_ca_file"),
    ("agents", "secret_file"),
    ("oauth", "client_secret_file"),
    ("oauth", "token_file"),
}


def default_path() -> Path:
    return Path(os.environ.get(ENV_VAR) or DEFAULT_PATH)


def load(path: str | os.PathLike[str] | None = None) -> Config:
    """Read the config file: `path`, else $MAILTICKET_CONFIG, else ./mailticket.toml.

    A missing file is an error, never a silent default: a command run in the wrong
    folder would otherwise show an empty helpdesk (and create a database there).
    """
    p = Path(path) if path is not None else default_path()
    if not p.exists():
        raise ConfigError(f"{p}: no such configuration file (run `mailticket init` to make one)")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    return from_dict(data, p)


def from_dict(data: dict, path: Path) -> Config:
    """Build a Config from parsed TOML; `path` is named in errors and anchors relative paths.

    Every problem in the file is reported at once, one line each, so an admin fixes
    them in one go rather than one per attempt.
    """
    problems: list[str] = []
    kwargs: dict[str, object] = {}
    sections = {f.name: f for f in dataclasses.fields(Config) if f.name != "path"}
    for name, value in data.items():
        if name not in sections:
            problems.append(f"unknown section [{name}] (known: {', '.join(sections)})")
        elif name == "calendars":
            kwargs[name] = _calendars(value, problems)
        elif name == "queues":
            kwargs[name] = _named(Queue, "queues", value, problems)
        elif name == "oauth":
            kwargs[name] = _named(OAuth, "oauth", value, problems)
        elif name == "sla" and isinstance(value, dict) and "policies" in value:
            rest = {k: v for k, v in value.items() if k != "policies"}
            sla = _section(Sla, name, rest, problems)
            policies = _named(Policy, "sla.policies", value["policies"], problems)
            kwargs[name] = dataclasses.replace(sla, policies=policies)  # type: ignore[type-var]
        elif name == "imap":
            if isinstance(value, dict):
                value = [value]
            if not isinstance(value, list):
                problems.append("[[imap]] must be a list of tables")
                continue
            kwargs[name] = tuple(_section(Imap, "imap", v, problems) for v in value)
        else:
            kwargs[name] = _section(_section_type(name), name, value, problems)
    cfg = Config(**kwargs)  # type: ignore[arg-type]
    _check(cfg, problems)
    if problems:
        raise ConfigError("\n".join(f"{path}: {p}" for p in problems))
    return _resolve(cfg, path.parent.resolve(), str(path))


def _calendars(value: object, problems: list[str]) -> dict[str, typing.Any]:
    from . import calendars

    if not isinstance(value, dict):
        problems.append("[calendars] must hold tables: [calendars.NAME]")
        return {}
    out = {}
    for name, table in value.items():
        if not isinstance(table, dict):
            problems.append(f"[calendars.{name}] must be a table")
            continue
        try:
            out[name] = calendars.parse(name, table)
        except ValueError as exc:
            problems.append(f"[calendars.{name}] {exc}")
    return out


def _named(cls: type, where: str, value: object, problems: list[str]) -> dict:
    """[WHERE.NAME] tables, each a `cls`."""
    if not isinstance(value, dict):
        problems.append(f"[{where}] must hold tables: [{where}.NAME]")
        return {}
    return {name: _section(cls, f"{where}.{name}", table, problems) for name, table in value.items()}


def _section_type(name: str) -> type:
    return typing.get_type_hints(Config)[name]


def _section(cls: type, name: str, value: object, problems: list[str]) -> object:
    """One section's dataclass; a key with a problem is noted and keeps its default."""
    if not isinstance(value, dict):
        problems.append(f"[{name}] must be a table")
        return cls()
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    out: dict[str, object] = {}
    for key, raw in value.items():
        if key not in known:
            problems.append(f"[{name}] unknown key '{key}' (known: {', '.join(sorted(known))})")
            continue
        try:
            coerced = _coerce(hints[key], raw, f"[{name}] {key}")
        except ConfigError as exc:
            problems.append(str(exc))
            continue
        kind = name.partition(".")[0]  # [oauth.NAME] is checked as [oauth]
        choices = _CHOICES.get((kind, key))
        low, high = _RANGES.get((kind, key), (None, None))
        if choices and coerced not in choices:
            problems.append(f"[{name}] {key}: must be one of {', '.join(choices)}, got {coerced!r}")
        elif isinstance(coerced, int) and (
            (low is not None and coerced < low) or (high is not None and coerced > high)
        ):
            within = f"from {low} to {high}" if high is not None else f"at least {low}"
            problems.append(f"[{name}] {key}: must be {within}, got {coerced}")
        else:
            out[key] = coerced
    return cls(**out)


def _coerce(hint: object, raw: object, where: str) -> object:
    origin = typing.get_origin(hint)
    if hint is bool:
        if not isinstance(raw, bool):
            raise ConfigError(f"{where}: expected true or false, got {raw!r}")
        return raw
    if hint is int:
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise ConfigError(f"{where}: expected an integer, got {raw!r}")
        if raw < 0:
            raise ConfigError(f"{where}: must not be negative, got {raw}")
        return raw
    if hint is str:
        if not isinstance(raw, str):
            raise ConfigError(f"{where}: expected a string, got {raw!r}")
        return raw
    if origin is tuple:
        if isinstance(raw, str):
            raw = [raw]
        if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
            raise ConfigError(f"{where}: expected a list of strings, got {raw!r}")
        return tuple(raw)
    if origin is dict:
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: expected a table, got {raw!r}")
        out = {}
        for k, v in raw.items():
            if k not in PRIORITIES:
                raise ConfigError(f"{where}: unknown priority '{k}' (use {', '.join(PRIORITIES)})")
            out[k] = _coerce(int, v, f"{where}.{k}")
        return out
    if isinstance(hint, types.UnionType):  # pragma: no cover - no optional keys yet
        return raw
    raise AssertionError(f"config schema has an unsupported type {hint!r}")


def host_port(value: str) -> tuple[str, int]:
    """`HOST:PORT` (IPv6 as `[::1]:25`) into its parts; ValueError when it is not one.

    Port 0 asks the system for a free port (the tests listen so)."""
    host, _, port = value.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT with a port from 1 to 65535, got {value!r}")
    return host, int(port)


def _check(cfg: Config, problems: list[str]) -> None:
    """Values that are well-typed but still wrong, and keys that must agree."""
    note = problems.append
    if "@" not in cfg.helpdesk.address:
        note(f"[helpdesk] address: not an email address: {cfg.helpdesk.address!r}")
    if "{number}" not in cfg.helpdesk.token:
        note(f"[helpdesk] token: must contain {{number}}, got {cfg.helpdesk.token!r}")
    try:
        ZoneInfo(cfg.helpdesk.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        note(f"[helpdesk] timezone: unknown time zone {cfg.helpdesk.timezone!r}")
    url = cfg.database.url
    if not url.startswith(("sqlite://", "postgresql://", "postgres://")):
        note(f"[database] url: use sqlite:///FILE or postgresql://USER@HOST/DB, got {url!r}")
    if cfg.helpdesk.language not in cfg.helpdesk.languages:
        note(f"[helpdesk] language: {cfg.helpdesk.language!r} is not in languages")
    try:
        cfg.calendar("")
    except (ValueError, KeyError, NotImplementedError) as exc:
        note(f"[sla] business_days/business_hours/holidays: {exc}")
    known = ", ".join(["default", *cfg.calendars])
    named = [("[sla] calendar", cfg.sla.calendar)]
    named += [(f"[sla.policies.{n}] calendar", p.calendar) for n, p in cfg.sla.policies.items()]
    named += [(f"[queues.{n}] calendar", q.calendar) for n, q in cfg.queues.items()]
    for where, name in named:
        if name and name != "default" and name not in cfg.calendars:
            note(f"{where}: no calendar {name!r} (known: {known})")
    for n, q in cfg.queues.items():
        if q.sla and q.sla not in cfg.sla.policies:
            note(f"[queues.{n}] sla: no policy {q.sla!r} (known: {', '.join(cfg.sla.policies) or 'none'})")
    if cfg.smtp.listen.startswith("unix:"):
        if not cfg.smtp.listen[len("unix:") :]:
            note('[smtp] listen: expected "unix:/PATH/TO/SOCKET" or HOST:PORT, got "unix:"')
        try:
            int(cfg.smtp.socket_mode, 8)
        except ValueError:
            note(f'[smtp] socket_mode: expected an octal mode such as "0660", got {cfg.smtp.socket_mode!r}')
    sasl: list[tuple[str, Imap | Outgoing]] = [(f"[[imap]] {b.user or b.host}", b) for b in cfg.imap]
    sasl.append(("[outgoing]", cfg.outgoing))
    for where, box in sasl:
        if box.auth != "password" and box.oauth not in cfg.oauth:
            known = ", ".join(cfg.oauth) or "none; add an [oauth.NAME] table"
            note(f"{where} oauth: auth = {box.auth!r} needs an [oauth.NAME] named here (known: {known})")
    out = cfg.outgoing
    if out.transport == "smtp" and out.auth != "password" and not out.username:
        note(f"[outgoing] username: required with auth = {out.auth!r} (the account the token signs in)")
    for name, o in cfg.oauth.items():
        if not o.client_id:
            note(f"[oauth.{name}] client_id: required (the app registration's client id)")
        if o.provider == "custom" and not o.token_url:
            note(f'[oauth.{name}] token_url: required with provider = "custom"')
    for section, key, value in (("smtp", "listen", cfg.smtp.listen), ("daemon", "http", cfg.daemon.http)):
        if key == "listen" and value.startswith("unix:"):
            continue
        if value or key == "listen":  # an empty [daemon] http turns the endpoint off
            try:
                host_port(value)
            except ValueError as exc:
                note(f"[{section}] {key}: {exc}")
    if cfg.outgoing.starttls and cfg.outgoing.implicit_tls:
        note("[outgoing] starttls and implicit_tls: choose one")


def _resolve(cfg: Config, base: Path, path: str) -> Config:
    """Anchor relative paths (and a relative SQLite file) at the config file's folder."""

    def fix(section: _Section, name: str) -> _Section:
        changes: dict[str, typing.Any] = {}  # path strings, for str fields
        for f in dataclasses.fields(section):
            if (name, f.name) in _PATH_KEYS:
                value = getattr(section, f.name)
                if value and not Path(value).is_absolute():
                    changes[f.name] = str(base / value)
        return dataclasses.replace(section, **changes) if changes else section

    smtp = fix(cfg.smtp, "smtp")
    if smtp.listen.startswith("unix:") and not Path(smtp.listen[5:]).is_absolute():
        smtp = dataclasses.replace(smtp, listen="unix:" + str(base / smtp.listen[5:]))
    oauth = {
        name: fix(dataclasses.replace(o, token_file=o.token_file or f"var/oauth/{name}.json"), "oauth")
        for name, o in cfg.oauth.items()
    }
    url = cfg.database.url
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        rel = url[len("sqlite:///") :]
        if rel and rel != ":memory:":
            url = "sqlite:///" + str(base / rel)
    return dataclasses.replace(
        cfg,
        outgoing=fix(cfg.outgoing, "outgoing"),
        paths=fix(cfg.paths, "paths"),
        smtp=smtp,
        oauth=oauth,
        imap=tuple(fix(i, "imap") for i in cfg.imap),
        agents=fix(cfg.agents, "agents"),
        database=Database(url=url),
        path=path,
    )


def read_secret(env: str, file: str, what: str) -> str:
    """A password from an environment variable or a file, never from the config itself."""
    if env:
        value = os.environ.get(env)
        if value is None:
            raise ConfigError(f"{what}: environment variable {env} is not set")
        return value
    if file:
        try:
            return Path(file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{what}: cannot read password file {file}: {exc}") from None
    return ""
