"""Mail in and out: `ingest` (an MTA pipe or files), `quarantine`, `inbox`, `outbox`.

Exit code 75 (EX_TEMPFAIL) tells an MTA to retry later, 67 (EX_NOUSER) that the
recipient is unknown (`ingest`, docs/deploy.md).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from .. import inbox as durable_inbox  # `inbox` is the name of a command group below
from .. import outbox
from ..app import App
from ..ingest import (
    EX_NOUSER,
    EX_TEMPFAIL,
    BadInput,
    count_inputs,
    log_for_pipe,
    one_line,
    refused_recipient,
    store_and_process,
)
from ..pipeline import Result
from .base import Ctx, TryLater, emit_json, json_option, main, table

log = logging.getLogger(__name__)

# --- ingest ------------------------------------------------------------------------------


class NotOurs(click.ClickException):
    """A --recipient that is not ours: exit 67, so that an MTA bounces it as unknown."""

    exit_code = EX_NOUSER


class IngestCommand(click.Command):
    """`ingest`: from a pipe (-) a usage error is 75 in one line, as every error before the
    store is: an MTA bounces any status it does not know, so a typo in its pipe command
    would bounce every message until someone noticed."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        pipe = "-" in args
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            if not pipe:
                raise
            raise TryLater(one_line(exc.format_message())) from None


def open_for_ingest(obj: Ctx, recipients: tuple[str, ...], pipe: bool) -> App:
    """The helpdesk, ready to store: exit 67 for a recipient not ours, 75 when it cannot open.

    From a pipe every failure before the store is 75 in one line, a user's error too
    (no configuration file, broken rules): the MTA keeps the mail until it is fixed,
    where any other status would bounce it to the sender.
    """
    try:
        if (rcpt := refused_recipient(obj.config, recipients)) is not None:
            raise NotOurs(f"<{one_line(rcpt.strip('<> '), 100)}>: recipient not accepted here")
        return obj.app()
    except NotOurs:
        raise
    except click.ClickException as exc:
        if pipe or isinstance(exc, TryLater):
            raise TryLater(one_line(exc.message)) from None
        raise
    except Exception as exc:  # a bug or a broken system, before anything was stored
        log.exception("ingest: could not open the helpdesk")
        raise TryLater(one_line(f"{type(exc).__name__}: {exc}; try again later")) from None


@main.command(cls=IngestCommand)
@click.argument("paths", nargs=-1, required=True)
@json_option
@click.option(
    "--batch", default=100, show_default=True, help="Messages stored and processed per transaction."
)
@click.option(
    "--recipient",
    "recipients",
    multiple=True,
    metavar="ADDRESS",
    help="The envelope recipient, as an MTA pipe passes it (repeatable): stored as "
    "the message's mailbox; exit 67 when it is not ours.",
)
@click.pass_obj
def ingest(obj: Ctx, paths: tuple[str, ...], as_json: bool, batch: int, recipients: tuple[str, ...]) -> None:
    """Store and process messages from .eml files, mboxes, Maildirs or - (stdin).

    Each message is first committed to the durable inbox, then run through the
    pipeline. With --json, one line per message:
    {"message_id", "outcome", "ticket", "reason"}; outcome is one of created,
    appended, duplicate, suppressed, bounce, quarantined.

    The envelope sender (the From_ line or Return-Path an MTA pipe puts first, an
    mbox's From_ lines) is kept as the message's topmost Return-Path header.

    Exit status: 0 when every message was stored (quarantine counts as stored, and so
    does a message whose processing failed: it stays pending for the daemon), 67 when
    a --recipient is not ours (nothing is stored), 75 when a message could not be
    stored, so that an MTA retries later.  From - (an MTA pipe) any failure before the
    store is 75, and stderr gets one line, never a traceback.
    """
    pipe = "-" in paths
    if pipe:
        log_for_pipe()
    for p in paths:
        if p != "-" and not Path(p).exists():
            raise click.BadParameter(f"{p}: no such file or folder", param_hint="PATHS")
    app = open_for_ingest(obj, recipients, pipe)
    show_bar = not as_json and sys.stderr.isatty()
    total = count_inputs(paths) if show_bar else None
    results: list[Result] = []

    def report(result: Result) -> None:
        if as_json:
            emit_json(result.as_dict())
        else:
            results.append(result)

    with click.progressbar(
        length=total or 0, label="ingesting", file=sys.stderr, hidden=not (show_bar and total and total > 50)
    ) as bar:
        try:
            done = store_and_process(
                app, paths, batch=batch, recipients=recipients, on_result=report, on_batch=bar.update
            )
        except BadInput as exc:
            raise click.BadParameter(str(exc)) from None
    if not as_json:
        if len(results) <= 20:
            for r in results:
                where = f"#{r.ticket}" if r.ticket else "-"
                click.echo(
                    f"{r.outcome:<11} {where:<7} {r.message_id or '(no Message-ID)'}"
                    + (f"  ({r.reason})" if r.reason else "")
                )
        if done.counts or done.problem is None:
            click.echo(", ".join(f"{n} {k}" for k, n in sorted(done.counts.items())) or "no messages")
    if done.problem:
        click.echo(done.problem, err=True)
    if done.exit_code:
        sys.exit(done.exit_code)


# --- outbox ------------------------------------------------------------------------------


@main.group("outbox")
def outbox_group() -> None:
    """Outgoing mail: list, deliver now, retry dead messages."""


@outbox_group.command("list")
@click.option(
    "--state",
    type=click.Choice(["queued", "sending", "sent", "retry", "dead"]),
    help="Only messages in this state (sending: claimed by a sender right now).",
)
@click.option("--limit", default=50, show_default=True, help="At most this many messages.")
@json_option
@click.pass_obj
def outbox_list(obj: Ctx, state, limit, as_json) -> None:
    """List outgoing messages, newest first."""
    obj.app(processing=False)
    rows = outbox.listing(state, limit)
    if as_json:
        emit_json([outbox.as_dict(r) for r in rows])
        return
    table(
        [
            [r.id, f"#{r.ticket}" if r.ticket else "", r.kind, r.state, r.attempts, r.to_addr, r.subject]
            for r in rows
        ],
        ["id", "ticket", "kind", "state", "tries", "to", "subject"],
    )


@outbox_group.command("deliver")
@click.pass_obj
def outbox_deliver(obj: Ctx) -> None:
    """Deliver every message that is due, once, and report.

    Exit 75 when the smarthost could not be used (connect, TLS, login): the messages
    wait in the queue, their attempts unspent.
    """
    app = obj.app(processing=False)
    done = outbox.deliver_due(app.config, app.clock)
    click.echo(f"{done.sent} sent, {done.retry} to retry, {done.dead} dead")
    if done.transport_error:
        click.echo(f"smarthost: {done.transport_error}", err=True)
        sys.exit(EX_TEMPFAIL)


@outbox_group.command("retry")
@click.argument("ids", nargs=-1, type=int)
@click.pass_obj
def outbox_retry(obj: Ctx, ids) -> None:
    """Queue dead messages (all, or IDS) for delivery again."""
    app = obj.app(processing=False)
    n = outbox.requeue(list(ids), app.clock.now())
    click.echo(f"{n} message(s) queued again")


# --- quarantine --------------------------------------------------------------------------


@main.group()
def quarantine() -> None:
    """Messages that could not be processed: list, show, retry."""


def inbox_row(r, *keys: str) -> dict:
    """An inbox row for `--json`: what every listing shows, then `keys`."""
    out = {
        "id": r.id,
        "received_at": r.received_at.isoformat(),
        "source": r.source,
        "message_id": r.message_id,
    }
    return out | {key: getattr(r, key) for key in keys}


@quarantine.command("list")
@json_option
@click.pass_obj
def quarantine_list(obj: Ctx, as_json: bool) -> None:
    """List quarantined messages with the step that failed and why."""
    obj.app(processing=False)
    rows = durable_inbox.quarantined(limit=1000)
    if as_json:
        emit_json([inbox_row(r, "step", "reason", "attempts") for r in rows])
        return
    table(
        [[r.id, r.received_at.strftime("%Y-%m-%d %H:%M"), r.source, r.step, r.reason] for r in rows],
        ["id", "received", "source", "step", "reason"],
    )


@quarantine.command("show")
@click.argument("inbox_id", type=int)
@click.option("--raw", is_flag=True, help="Print the raw message bytes.")
@click.pass_obj
def quarantine_show(obj: Ctx, inbox_id: int, raw: bool) -> None:
    """Show one quarantined message: why, and its headers (or --raw bytes)."""
    obj.app(processing=False)
    row = durable_inbox.get(inbox_id)
    if row is None:
        raise click.ClickException(f"no message {inbox_id} in the inbox (see `mailticket quarantine list`)")
    data = bytes(row.raw)
    if raw:
        sys.stdout.buffer.write(data)
        return
    click.echo(f"inbox #{row.id}  state {row.state}  source {row.source}  received {row.received_at}")
    click.echo(f"step: {row.step}\nreason: {row.reason}\nattempts: {row.attempts}\n")
    click.echo(data.split(b"\n\n", 1)[0][:4000].decode("utf-8", "replace"))


@quarantine.command("retry")
@click.argument("ids", nargs=-1, type=int)
@json_option
@click.pass_obj
def quarantine_retry(obj: Ctx, ids, as_json: bool) -> None:
    """Run quarantined messages (all, or IDS) through the pipeline again."""
    app = obj.app()
    moved = durable_inbox.requeue(list(ids))
    assert app.worker is not None  # opened for processing
    results = app.worker.run_pending(ids=moved) if moved else []
    if as_json:
        for r in results:
            emit_json(r.as_dict())
        return
    for r in results:
        click.echo(
            f"{r.inbox_id}: {r.outcome}"
            + (f" #{r.ticket}" if r.ticket else "")
            + (f" ({r.reason})" if r.reason else "")
        )
    click.echo(f"{len(results)} message(s) retried")


# --- inbox -------------------------------------------------------------------------------


@main.group()
def inbox() -> None:
    """Processed messages and what became of each: list (see also `quarantine show ID`)."""


@inbox.command("list")
@click.option(
    "--outcome",
    type=click.Choice(["created", "appended", "duplicate", "suppressed", "bounce"]),
    help="Only messages with this outcome.",
)
@click.option("--unmatched", is_flag=True, help="Only messages that went to no ticket.")
@click.option("--limit", type=int, default=100, show_default=True, help="At most this many messages.")
@json_option
@click.pass_obj
def inbox_list(obj: Ctx, outcome: str | None, unmatched: bool, limit: int, as_json: bool) -> None:
    """List processed messages, newest first, with their ticket and reason.

    Bounces that match no ticket are kept only here: `mailticket inbox list --outcome
    bounce --unmatched` shows them, `mailticket quarantine show ID` their headers.
    """
    from .. import models

    obj.app(processing=False)
    rows = models.inbox_listing(outcome, unmatched, limit)
    if as_json:
        emit_json([inbox_row(r, "outcome", "ticket", "reason") for r in rows])
        return
    table(
        [
            [
                r.id,
                r.received_at.strftime("%Y-%m-%d %H:%M"),
                r.source,
                r.outcome,
                f"#{r.ticket}" if r.ticket else "-",
                (r.reason or "")[:80],
            ]
            for r in rows
        ],
        ["id", "received", "source", "outcome", "ticket", "reason"],
    )


# --- rules -------------------------------------------------------------------------------
