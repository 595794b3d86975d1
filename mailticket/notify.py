"""Render jinja2 templates into outgoing messages and queue them in the outbox.

A template is a text file whose first lines are headers (`Subject: ...`), then a
blank line, then the body: one file per kind and language (`ack.en.txt.j2`).  A
site's own template folder (`[paths] templates`) is searched first, so an admin
overrides one file by writing one of the same name, and can `{% extends %}` the
shipped one (as datasette does).

Only the row is written here, on the pipeline's hot path: a subject, a body and
the headers that matter.  The MIME message is built when the outbox delivers it
(`outbox.build`), since building and serialising costs more than the parse
(docs/performance.md: ~3 ms a message).

Every automatic message carries the headers of RFC 3834 (`Auto-Submitted`), a
Message-ID of our own domain, In-Reply-To/References to the customer's message and
the token in the subject; Thread-Topic/Thread-Index keep Outlook's conversation
view together.  Every message we send carries `X-Loop: <our address>`, so that mail
that comes back with it is known as our own (the pipeline's guard), and no subject
longer than MAX_SUBJECT.  `automatic_block` says whether automatic mail to an
address must not go out now (limits per address, per domain and in all; a bounce).
"""

from __future__ import annotations

import base64
import email.utils
import os
import re
import struct
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2

from . import models
from .errors import TemplateError
from .models import Message, Outbox

SHIPPED_TEMPLATES = Path(__file__).parent / "templates"

# A token, "Re: " and a ticket subject (at most models.MAX_TICKET_SUBJECT) fit; a 1 MB
# subject of a customer's never becomes a 1 MB header line of ours.
MAX_SUBJECT = 300


@dataclass(frozen=True)
class Rendered:
    subject: str
    body: str


class Templates:
    """The template lookup: a site folder first, the shipped templates after."""

    def __init__(self, site_folder: str | os.PathLike[str] | None = None) -> None:
        folders = [str(site_folder)] if site_folder and Path(site_folder).is_dir() else []
        folders.append(str(SHIPPED_TEMPLATES))
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(folders),
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=True,
            autoescape=False,  # plain-text mail
        )

    def names(self) -> list[str]:
        return sorted(self.env.list_templates(extensions=["j2"]))

    def render(self, kind: str, language: str, fallback_language: str, **context) -> Rendered:
        """Render `kind` in `language`, or in the fallback language when there is none."""
        names = [f"{kind}.{language}.txt.j2", f"{kind}.{fallback_language}.txt.j2"]
        try:
            template = self.env.select_template(names)
            text = template.render(**context)
        except jinja2.TemplateNotFound:
            raise TemplateError(f"no template for {kind!r} (looked for {', '.join(names)})") from None
        except jinja2.TemplateError as exc:
            raise TemplateError(f"template {names[0]}: {exc}") from None
        return split_headers(text, names[0])


def split_headers(text: str, name: str) -> Rendered:
    head, sep, body = text.partition("\n\n")
    subject = None
    for line in head.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() == "subject":
            subject = " ".join(value.split())[:MAX_SUBJECT]
    if not sep or subject is None:
        raise TemplateError(f"template {name}: must start with a 'Subject:' line and a blank line")
    return Rendered(subject=subject, body=body)


MSGID_TAG = "mailticket"  # in every Message-ID we make, so we know our own mail when it returns


def make_msgid(domain: str) -> str:
    """A Message-ID of our own domain (RFC 5322 section 3.6.4)."""
    return email.utils.make_msgid(idstring=MSGID_TAG, domain=domain)


_OUR_MSGID = re.compile(r"<[0-9.]+\." + MSGID_TAG + r"@([^<>@\s]+)>")


def is_our_msgid(message_id: str, domain: str) -> bool:
    """Was `message_id` made by `make_msgid(domain)`?  (32 hex digits: a colleague's mail
    client in our own domain makes ids of other shapes.)"""
    m = _OUR_MSGID.fullmatch(message_id)
    return m is not None and m.group(1).lower() == domain.lower()


# Outlook's Thread-Index: 22 bytes for the first message of a conversation (6 bytes of
# FILETIME, 16 of GUID), plus 5 bytes per reply.  Without it, Outlook may split the
# conversation when the subject changes; with the customer's own index extended, our
# reply lands in their conversation.  (MS-OXOMSG 2.2.1.3, PidTagConversationIndex.)
_FILETIME_EPOCH = 116444736000000000  # 1601-01-01 to 1970-01-01 in 100 ns units


def thread_index(parent: str | None, now: datetime) -> str:
    filetime = _FILETIME_EPOCH + int(now.timestamp() * 10_000_000)
    if parent:
        try:
            raw = base64.b64decode(parent, validate=False)
        except ValueError:
            raw = b""
        if len(raw) >= 22:
            # Child block: the time delta in a 31-bit field (simplified: high bits of the
            # delta) plus a random nibble sequence; Outlook needs only the parent prefix.
            delta = (filetime >> 18) & 0x7FFFFFFF
            child = struct.pack(">I", delta) + os.urandom(1)
            return base64.b64encode(raw + child).decode("ascii")
    head = struct.pack(">Q", filetime)[:6]
    return base64.b64encode(head + uuid.uuid4().bytes).decode("ascii")


def reply_headers(
    parent_id: str | None,
    parent_refs: list[str],
    parent_thread_index: str | None,
    topic: str,
    now: datetime,
    automatic: bool,
) -> dict[str, str]:
    """In-Reply-To/References/Thread-* for a message that answers `parent_id`."""
    headers: dict[str, str] = {"Thread-Topic": topic, "Thread-Index": thread_index(parent_thread_index, now)}
    if parent_id:
        refs = [r for r in parent_refs if r != parent_id][-20:] + [parent_id]
        headers["In-Reply-To"] = parent_id
        headers["References"] = " ".join(refs)
    if automatic:
        # RFC 3834 section 5: a response to a message is "auto-replied"; and ask
        # Exchange not to answer it with its own auto-replies.
        headers["Auto-Submitted"] = "auto-replied"
        headers["X-Auto-Response-Suppress"] = "All"
        headers["Precedence"] = "auto_reply"
    return headers


def queue(**row: Any) -> int:
    """Write one outgoing message into the outbox (inside the caller's transaction); its id.

    `row` holds `outbox_row`'s keywords.  Automatic mail must have passed
    `automatic_block` first.  Every message goes out from the helpdesk's address, which
    its X-Loop names (RFC 3834 section 3.1.8's advice: recognise our own mail when it
    comes back)."""
    return queue_rows([outbox_row(**row)], row["now"])[0]


def outbox_row(
    *,
    kind: str,
    ticket: int | None,
    mail_from: str,
    to: str,
    rendered: Rendered,
    headers: dict[str, str],
    message_id: str,
    now: datetime,
    automatic: bool,
    attachments: list[dict] | None = None,
) -> dict:
    """One outgoing message as an outbox row, for `queue_rows` to write with others in one
    statement.  `attachments` are files of the attachment store that go with the text:
    `{filename, content_type, sha256}`."""
    return dict(
        ticket=ticket,
        kind=kind,
        automatic=automatic,
        mail_from=mail_from,
        to_addr=to,
        to_domain=to.rpartition("@")[2].lower() or None,
        subject=rendered.subject,
        body=rendered.body,
        headers={**headers, "X-Loop": mail_from},
        attachments=attachments or None,
        message_id=message_id,
        state="queued",
        next_attempt_at=now,
        created_at=now,
    )


def queue_rows(rows: list[dict], now: datetime) -> list[int]:
    """Write `outbox_row`s in one INSERT, counting the automatic ones against their
    limits (one more statement); their ids in order."""
    counts: dict[str, int] = {}
    for row in rows:
        if row["automatic"]:
            for scope in limit_scopes(row["to_addr"], row["kind"]):
                counts[scope] = counts.get(scope, 0) + 1
    if counts:
        models.count_automatic(counts, now)
    return models.insert_many(Outbox, rows, keys=True)


# Automatic mail to the helpdesk's own people: counted against the address's own limit
# (`[agents] notification_limit`), not the domain's or everyone's, which stop loops with
# strangers' robots: a busy team's notifications must not starve the customers' mail.
AGENT_KINDS = frozenset({"notification", "confirmation", "warning", "escalation"})


def limit_scopes(to: str, kind: str) -> list[str]:
    """The AutoCount scopes an automatic mail of `kind` to `to` counts in."""
    address = to.lower()
    if kind in AGENT_KINDS:
        return [f"a:{address}"]
    return [f"a:{address}", f"d:{address.rpartition('@')[2]}", "*"]


def automatic_block(to: str, helpdesk, now: datetime) -> str:
    """Why automatic mail to `to` (a customer, anyone but our agents) must not go out now,
    or "" when it may.

    Every automatic kind asks this before `queue`: a limit per address, one per domain
    (another helpdesk that answers each acknowledgement from a new address loops through
    one domain) and one in all, per hour; and no automatic mail to an address whose mail
    bounced for good until it writes to us again (the pipeline clears the mark).
    """
    counts, marks = customer_counts([to], now)
    return customer_block(to, helpdesk, counts, marks.get(to.lower()))


def agent_counts(addresses: list[str], now: datetime) -> tuple[dict[str, int], dict[str, str]]:
    """For mail to agents (AGENT_KINDS), several at once: how many automatic mails each of
    `addresses` had this hour, and the bounce marks among them (the caller holds them to
    `[agents] notification_limit`)."""
    if not addresses:
        return {}, {}
    scopes = [limit_scopes(a, "notification")[0] for a in addresses]
    counts, marks = models.automatic_mail_state(scopes, [a.lower() for a in addresses], now)
    return dict(zip(addresses, counts)), {a: m for a, m in zip(addresses, marks) if m}


def bounced_reason(to: str, status: str) -> str:
    return f"mail to {to} bounced ({status}); no automatic mail until it writes again"


def sent_message(ticket: int, msgid: str, sender: str, to: str, rendered: Rendered, now: datetime) -> dict:
    """Our automatic mail to a customer as a message row of the ticket: a reply to it
    threads by its References, and the update interval counts from it (sla.last_sent)."""
    return dict(
        ticket=ticket,
        direction="out",
        kind="system",
        message_id=msgid,
        from_addr=sender,
        to=[to],
        subject=rendered.subject,
        text=rendered.body,
        body=rendered.body,
        created_at=now,
    )


def customer_counts(addresses: list[str], now: datetime) -> tuple[dict[str, int], dict[str, str | None]]:
    """For automatic mail to customers, several at once: the hour's count of every scope
    their limits read (address, domain, everyone), and their bounce marks."""
    if not addresses:
        return {}, {}
    scopes = sorted({scope for a in addresses for scope in limit_scopes(a, "ack")})
    lowered = [a.lower() for a in addresses]
    counts, marks = models.automatic_mail_state(scopes, lowered, now)
    return dict(zip(scopes, counts)), dict(zip(lowered, marks))


def customer_block(to: str, helpdesk, counts: dict[str, int], bounced: str | None) -> str:
    """`automatic_block` on counts read already (`customer_counts`, kept up to date)."""
    if bounced:
        return bounced_reason(to, bounced)
    scopes = limit_scopes(to, "ack")
    caps = (helpdesk.auto_reply_limit, helpdesk.auto_reply_limit_domain, helpdesk.auto_reply_limit_total)
    for scope, cap, name in zip(scopes, caps, (to, f"domain {scopes[1][2:]}", "all recipients")):
        if counts.get(scope, 0) >= cap:
            return f"{name} reached {cap} automatic mails this hour"
    return ""


def customer_mail(
    ticket,
    *,
    kind: str,
    template: str,
    to: str,
    parent: tuple[str | None, list[str], str | None],
    helpdesk,
    templates: Templates,
    token: str,
    now: datetime,
    **context,
) -> tuple[dict, dict]:
    """Automatic mail of ours to `ticket`'s customer `to`: `template` rendered in their
    language, threaded to `parent` (Message-ID, References, Thread-Index), as outbox
    `kind`.  The outbox row and the message row that records it on the ticket (a reply
    to it threads by its References; the update interval counts from it), for the
    caller to write, one at a time or a batch together."""
    rendered = templates.render(
        template,
        ticket.language,
        helpdesk.language,
        token=token,
        subject=ticket.subject,
        name=ticket.requester_name,
        helpdesk=helpdesk.name,
        ticket=ticket,
        **context,
    )
    msgid = make_msgid(helpdesk.domain)
    headers = {
        "From": email.utils.formataddr((helpdesk.name, helpdesk.address)),
        **reply_headers(*parent, ticket.subject[:MAX_SUBJECT], now, automatic=True),
    }
    row = outbox_row(
        kind=kind,
        ticket=ticket.number,
        mail_from=helpdesk.address,
        to=to,
        rendered=rendered,
        headers=headers,
        message_id=msgid,
        now=now,
        automatic=True,
    )
    return row, sent_message(ticket.number, msgid, helpdesk.address, to, rendered, now)


def acknowledge(
    ticket,
    *,
    to: str,
    kind: str,
    token: str,
    parent,
    helpdesk,
    templates: Templates,
    now: datetime,
    **context,
) -> str:
    """Queue the acknowledgement of `ticket` to `to`, answering `parent`; its Message-ID.

    `parent` is the customer's ParsedMessage; `kind` the template (a rule may name
    another than `ack`); the outbox kind is `ack`.
    """
    thread = (parent.message_id, parent.references, parent.header("thread-index"))
    row, message = customer_mail(
        ticket,
        kind="ack",
        template=kind,
        to=to,
        parent=thread,
        helpdesk=helpdesk,
        templates=templates,
        token=token,
        now=now,
        **context,
    )
    queue_rows([row], now)
    models.insert(Message, message)
    return row["message_id"]
