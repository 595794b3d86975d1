"""Who may act as an agent: signed reply addresses and the receiving MTA's verdict.

Its place in the flow (docs/architecture.md section 1): the pipeline's `authenticate`
step, after `guard` and before `thread`, asks this module whether a message whose
From is an agent really is that agent's.  From alone proves nothing (anyone can write
any From), so an agent's mail counts as theirs only with one of two proofs:

- A signed reply address.  Each notification to an agent carries a Reply-To that is
  the helpdesk's address with a plus tag (RFC 5233 subaddressing), for example
  `support+r.123.1767225600.k3j...@example.com`: purpose (`r` reply, `n` note),
  ticket, expiry (Unix seconds) and an HMAC-SHA256 over those and the agent's
  address.  A reply to it verifies only from that agent's From and before expiry.
- Authentication-Results (RFC 8601) from our own MTA: the topmost header with our
  authserv-id showing DKIM (RFC 6376) aligned with the agent's domain, or DMARC
  (RFC 7489) pass for it.  Lower headers, or those of another authserv-id, may come
  from the sender and are never trusted (RFC 8601 section 5).

The secret lives outside the config (STYLE.md 11): `[agents] secret_env` or
`secret_file`, which `mailticket init` writes.  `authres` is imported here only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import authres

from .config import Config, read_secret
from .errors import ConfigError

PURPOSES = {"reply": "r", "note": "n"}
_PURPOSE_OF = {v: k for k, v in PURPOSES.items()}
# 20 base32 characters: 100 bits of the MAC; lower-case letters and digits 2-7, safe in
# a local part, and unchanged by MTAs that lower-case local parts.
MAC_LENGTH = 20
_TAG = re.compile(r"^([rn])\.(\d{1,12})\.(\d{1,12})\.([a-z2-7]+)$")
BAD = "bad signature or another sender"  # a MAC cannot tell the two apart
EXPIRED = "expired"


@dataclass(frozen=True)
class Signed:
    """A signed reply address found among a message's recipients, and its verdict."""

    purpose: str  # reply | note
    ticket: int
    expires: datetime
    valid: bool
    why: str = ""  # why not valid: BAD or EXPIRED


def secret(config: Config) -> bytes:
    """The signing secret: `[agents] secret_env` when that variable is set, else `secret_file`.

    The environment wins so that a deployment can override the file `init` wrote
    without editing the config.  Raises ConfigError when neither holds one.
    """
    cfg = config.agents
    env = cfg.secret_env if cfg.secret_env and cfg.secret_env in os.environ else ""
    value = read_secret(env, cfg.secret_file, "[agents]")
    if not value:
        raise ConfigError(
            f"[agents]: no signing secret: set ${cfg.secret_env or 'MAILTICKET_AGENT_SECRET'} or "
            f"secret_file (`mailticket init` writes one)"
        )
    return value.encode("utf-8")


def write_secret(path: Path) -> bool:
    """Create `path` holding a random secret, readable by its owner only (mode 0600).

    False when it exists: a new secret would void every reply address already sent.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:  # created with its mode: never readable by others, not even for a moment
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(secrets.token_urlsafe(32) + "\n")
    return True


def _mac(purpose: str, ticket: int, agent: str, expires: int, secret: bytes) -> str:
    message = f"{purpose}\0{ticket}\0{agent.strip().lower()}\0{expires}".encode()
    digest = hmac.new(secret, message, hashlib.sha256).digest()
    return base64.b32encode(digest).decode("ascii").lower()[:MAC_LENGTH]


def reply_address(
    helpdesk_address: str, *, ticket: int, agent: str, purpose: str, expires: datetime, secret: bytes
) -> str:
    """The helpdesk's address with a tag signed for `agent` on `ticket` until `expires`."""
    code = PURPOSES[purpose]  # KeyError: a programming error, not input
    local, _, domain = helpdesk_address.rpartition("@")
    stamp = int(expires.timestamp())
    return f"{local}+{code}.{ticket}.{stamp}.{_mac(purpose, ticket, agent, stamp, secret)}@{domain}"


def _tags(addresses: list[str], helpdesk_address: str) -> list[re.Match[str]]:
    """The well-formed tags of `helpdesk_address` among `addresses`."""
    local, _, domain = helpdesk_address.lower().rpartition("@")
    out = []
    for address in addresses:
        a_local, _, a_domain = address.strip().strip("<>").lower().rpartition("@")
        base, plus, tag = a_local.partition("+")
        if plus and base == local and a_domain == domain and (m := _TAG.match(tag)):
            out.append(m)
    return out


def carries_tag(addresses: list[str], helpdesk_address: str) -> bool:
    """Does any address look like a signed reply address (before any secret is read)?"""
    return bool(_tags(addresses, helpdesk_address))


def verify(
    addresses: list[str], sender: str, *, now: datetime, secret: bytes, helpdesk_address: str
) -> Signed | None:
    """The signed reply address among `addresses` and whether it holds for `sender` at `now`.

    None when there is none; the first valid one when several; else the first found,
    with valid False and why.
    """
    found = []
    for m in _tags(addresses, helpdesk_address):
        code, ticket, stamp, mac = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)
        purpose = _PURPOSE_OF[code]
        expires = datetime.fromtimestamp(stamp, timezone.utc)
        if not hmac.compare_digest(mac, _mac(purpose, ticket, sender, stamp, secret)):
            found.append(Signed(purpose, ticket, expires, False, BAD))
        elif expires <= now:
            found.append(Signed(purpose, ticket, expires, False, EXPIRED))
        else:
            return Signed(purpose, ticket, expires, True)
    return found[0] if found else None


def aligned(parsed_headers_authentication_results: list[str], *, authserv_id: str, domain: str) -> bool:
    """Does our own MTA's topmost Authentication-Results vouch for mail from `domain`?

    `parsed_headers_authentication_results` are the header values, topmost first (the
    order MTAs prepend them in).  Only the first one with our authserv-id counts: a
    lower one may be the sender's forgery.  Aligned: dkim=pass with header.d
    equal to `domain` or a parent of it (relaxed alignment, RFC 7489 3.1.1), or
    dmarc=pass with header.from equal to `domain`.
    """
    ours, domain = authserv_id.strip().lower(), domain.strip().lower()
    if not ours or not domain:
        return False
    for value in parsed_headers_authentication_results:
        try:
            header = authres.AuthenticationResultsHeader.parse_value(value)
        except authres.AuthResError:
            # Unreadable: when it is ours, nothing lower may stand in for it.
            if value.split(";", 1)[0].strip().lower() == ours:
                return False
            continue
        if (header.authserv_id or "").lower() != ours:
            continue
        return any(_passes(result, domain) for result in header.results)
    return False


def _passes(result: authres.AuthenticationResult, domain: str) -> bool:
    if (result.result or "").lower() != "pass":
        return False
    props = {
        (p.type or "").lower() + "." + (p.name or "").lower(): (p.value or "").lower()
        for p in result.properties
    }
    method = (result.method or "").lower()
    if method == "dkim":
        # A bare `d=` (no ptype) is not RFC 8601 syntax; authres drops it, and so do we.
        d = props.get("header.d", "")
        # A parent, not a public suffix: at least two labels (no list of suffixes here).
        return "." in d and (domain == d or domain.endswith("." + d))
    if method == "dmarc":
        return props.get("header.from") == domain
    return False


# --- signed survey addresses (surveys.py) -------------------------------------------------
#
# A survey's links are `mailto:` links to the helpdesk's address with a plus tag
# `s.<ticket>.<score>.<mac>`: an HMAC-SHA256 over "s", the ticket and the score, with the
# same secret, so that no one can rate another customer's ticket or change the score of
# a link they were sent.  Unlike a reply address it names no sender and does not expire:
# whoever holds the customer's mail may rate (a colleague they forwarded it to), and a
# late rating is still one.  "s" differs from the reply MAC's purposes, so neither MAC can
# stand for the other.

_SURVEY_TAG = re.compile(r"^s\.(\d{1,12})\.(\d{1,3})\.([a-z2-7]+)$")


@dataclass(frozen=True)
class Rated:
    """A signed survey address found among a message's recipients, and its verdict."""

    ticket: int
    score: int
    valid: bool
    why: str = ""  # why not valid: BAD


def _survey_mac(ticket: int, score: int, secret: bytes) -> str:
    digest = hmac.new(secret, f"s\0{ticket}\0{score}".encode(), hashlib.sha256).digest()
    return base64.b32encode(digest).decode("ascii").lower()[:MAC_LENGTH]


def survey_address(helpdesk_address: str, *, ticket: int, score: int, secret: bytes) -> str:
    """The helpdesk's address with a tag that records `score` for `ticket` when mailed to."""
    local, _, domain = helpdesk_address.rpartition("@")
    return f"{local}+s.{ticket}.{score}.{_survey_mac(ticket, score, secret)}@{domain}"


def _survey_tags(addresses: list[str], helpdesk_address: str) -> list[re.Match[str]]:
    """The well-formed survey tags of `helpdesk_address` among `addresses`."""
    local, _, domain = helpdesk_address.lower().rpartition("@")
    out = []
    for address in addresses:
        a_local, _, a_domain = address.strip().strip("<>").lower().rpartition("@")
        base, plus, tag = a_local.partition("+")
        if plus and base == local and a_domain == domain and (m := _SURVEY_TAG.match(tag)):
            out.append(m)
    return out


def carries_survey_tag(addresses: list[str], helpdesk_address: str) -> bool:
    """Does any address look like a signed survey address (before any secret is read)?"""
    return bool(_survey_tags(addresses, helpdesk_address))


def verify_survey(addresses: list[str], *, secret: bytes, helpdesk_address: str) -> Rated | None:
    """The signed survey address among `addresses` and whether its MAC holds.

    None when there is none; the first valid one when several; else the first found,
    with valid False.  The score is as signed: whether it is on the scale is the caller's.
    """
    found = []
    for m in _survey_tags(addresses, helpdesk_address):
        ticket, score, mac = int(m.group(1)), int(m.group(2)), m.group(3)
        if hmac.compare_digest(mac, _survey_mac(ticket, score, secret)):
            return Rated(ticket, score, True)
        found.append(Rated(ticket, score, False, BAD))
    return found[0] if found else None
