"""The pipeline's steps for agents' mail: who may act as an agent, and what their mail does.

Place in the flow (pipeline.py): `authenticate` runs after `guard` and gives the verdict
(agent, forged or customer); `agent` runs after `thread` and ends the pipeline for an
authenticated agent's mail (`Stop`), through actions.py.  Both are steps of
`pipeline.STEPS`, functions of `(run, env)` like the others.

pipeline.py imports this module for its STEPS, so `Run` and `Env` are imported here
for the type checker only, and `agent` imports `Stop` and `message_columns` when it runs.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from . import actions, auth, tickets
from .parsers import commands, forward
from .tokens import clean_subject

if TYPE_CHECKING:
    from .pipeline import Env, Run

log = logging.getLogger(__name__)


def authenticate(run: Run, env: Env) -> None:
    """Is this an agent's mail?  Never by From alone (auth.py): an active agent's From and
    a reply address signed for that From, or our MTA's aligned Authentication-Results.

    An agent's From without that proof, or a signed address that does not verify, is
    "forged": logged, and a `security` event on the ticket the tag or the token names.
    The verdict, when not "customer", is in the result's reason.
    """
    pm, cfg, hd = run.pm, env.config.agents, env.config.helpdesk.address
    if cfg.auth == "none" or not run.sender or env.config.is_ours(run.sender):
        return  # our own addresses are never agents (`guard` suppresses them)
    addresses = [a.email for a in (*pm.to, *pm.cc)]
    if run.row.mailbox and "@" in run.row.mailbox:  # the envelope recipient
        addresses.append(run.row.mailbox)
    sender = run.sender.lower()
    agent = next((a for a in env.active_agents() if a.email == sender), None)
    tagged = auth.carries_tag(addresses, hd)
    if agent is None and not tagged:
        return  # the usual customer's mail: no secret to read, nothing to verify
    if tagged:
        run.signed = auth.verify(
            addresses, run.sender, now=env.clock.now(), secret=env.agent_secret(), helpdesk_address=hd
        )
    signed = run.signed
    how = "signed reply address" if signed is not None and signed.valid else ""
    if agent is not None and not how and cfg.authserv_id:
        results = pm.headers.get("authentication-results", [])
        domain = run.sender.rpartition("@")[2]
        if auth.aligned(results, authserv_id=cfg.authserv_id, domain=domain):
            how = f"Authentication-Results of {cfg.authserv_id}"
    if agent is not None and how:
        run.verdict, run.agent = "agent", agent
        run.note(f"auth: agent {agent.email} ({how})")
        return
    if agent is None and (signed is None or signed.valid):
        return  # a valid signature for someone no longer an agent: a customer's mail
    if signed is not None and not signed.valid:
        why = signed.why
    else:
        why = "no signed reply address" + (" nor aligned Authentication-Results" if cfg.authserv_id else "")
    run.verdict = "forged"
    run.note(f"auth: forged agent mail from {run.sender}: {why}")
    log.warning(
        "inbox #%s %s: forged agent mail from %s: %s",
        run.row.id,
        (pm.message_id or "")[:200],
        run.sender,
        why,
    )
    number = signed.ticket if signed is not None else env.tokens.find(pm.subject)
    named = tickets.by_number(number) if number else None
    if named is not None:
        detail = {"verdict": "forged", "sender": run.sender, "why": why, "inbox": run.row.id}
        run.event(named, "system", "security", detail)


def agent(run: Run, env: Env) -> None:
    """An agent's mail: a note, commands, a reply to relay, or a forward to open a ticket
    with (actions.py); the pipeline ends here for it (`Stop`), outcome `note`,
    `commands`, `agent-reply` or `created`.

    The ticket is the one the signed reply address names, else the subject token's.  An
    agent's auto-reply (out-of-office) to a notification is recorded, never relayed.
    Forged agent mail goes on as an ordinary message of its sender's, with no
    acknowledgement (a forger must not make us mail anyone) and its commands ignored.
    """
    if run.verdict == "forged":
        run.no_ack = run.no_ack or "forged agent mail"
        return
    if run.verdict != "agent" or run.agent is None:
        return
    from .pipeline import Stop, message_columns  # pipeline imports this module for its STEPS

    pm, now, who = run.pm, env.clock.now(), run.agent
    signed = run.signed if run.signed is not None and run.signed.valid else None
    number = signed.ticket if signed is not None else env.tokens.find(pm.subject)
    t = (tickets.by_number(number) if number else None) or run.ticket
    if t is not None and run.kind in ("auto-reply", "bounce"):
        run.ticket = t
        run.events += tickets.add_message(
            t, *message_columns(run, env, pm.new_text), actor=who.email, now=now
        )
        run.note(f"{run.kind} of agent {who.email}: recorded, not relayed")
        raise Stop("suppressed", run.reason)
    message, files = message_columns(run, env, "")
    if t is None:
        original = forward.find(pm)
        if original is None:
            return  # a fresh mail of an agent's, with no ticket: an ordinary message
        run.ticket = actions.open_ticket(
            requester=original.sender,
            name=original.name,
            subject=clean_subject(original.subject or pm.subject),
            text=original.text,
            channel="email",
            agent=who,
            now=now,
            env=env,
            message_id=message["message_id"],
        )
        run.note(f"opened for {original.sender}, forwarded by {who.email}")
        raise Stop("created", run.reason)
    run.ticket = t
    found, text = commands.parse(pm.new_text)
    is_note = (signed is not None and signed.purpose == "note") or any(c.name == "note" for c in found)
    acting = [c for c in found if c.name != "note"]
    outcome = "commands"
    if acting:
        replying = bool(text.strip()) and not is_note
        outcomes = actions.apply(t, acting, agent=who, now=now, env=env, with_reply=replying)
        actions.confirm(t, agent=who, outcomes=outcomes, now=now, env=env)
        run.note(f"commands: {sum(o.ok for o in outcomes)} done, {sum(not o.ok for o in outcomes)} refused")
    if text.strip() and is_note:
        actions.note(t, agent=who, text=text.strip(), attachments=files, now=now, env=env)
        outcome = "note"
    elif text.strip():
        actions.reply(t, agent=who, text=text.strip(), attachments=files, now=now, env=env)
        outcome = "agent-reply"
        if (
            acting
            and t.status == "resolved"
            and any(o.ok and o.command.startswith("#status") for o in outcomes)
        ):
            actions.resolved(t, now=now, env=env)
    elif not acting:
        run.note("no text and no command: nothing to do")
    raise Stop(outcome, run.reason)
