"""An agent works a ticket by mail and from the CLI (actions.py, the pipeline's `agent` step).

Through a real ingest on both backends: a signed reply is relayed to the customer from
the helpdesk, threaded, with only the agent's text; commands are applied and confirmed
(or refused) to the agent, a commands-only reply sends nothing to the customer; notes
are never sent; forged agent mail changes and sends nothing; an agent's out-of-office
is recorded, not relayed.  The CLI verbs do the same, naming the agent in the history.
"""

from __future__ import annotations

import email
import json
from datetime import datetime, timedelta, timezone
from email.policy import default

import pytest

from mailticket import auth

from mails import mail, msgid

SECRET = b"s3cret-for-tests"
HD = "support@helpdesk.test"
BOB = "bob@agents.test"
SUBJECT = "Re: [#1] Printer is broken"


def signed(ticket=1, agent=BOB, purpose="reply") -> str:
    expires = datetime.now(timezone.utc) + timedelta(days=30)
    return auth.reply_address(HD, ticket=ticket, agent=agent, purpose=purpose, expires=expires, secret=SECRET)


def client_reply(top: str, *, to: str, sender=f"Bob <{BOB}>", subject=SUBJECT, **kw) -> bytes:
    """An agent's reply as Gmail builds it: their text, an attribution line, the quote."""
    quoted = (
        "## Reply above this line ##\n"
        "Ticket [#1] Printer is broken, from alice@customer.test:\n\n"
        "my printer does not print.\n"
    )
    body = f"{top}\n\nOn Mon, 2 Mar 2026 at 10:05, Test Support <{HD}> wrote:\n" + "".join(
        f"> {line}\n" for line in quoted.splitlines()
    )
    return mail(sender=sender, to=to, subject=subject, body=body, **kw)


@pytest.fixture
def desk(helpdesk, tmp_path, monkeypatch):
    """A helpdesk with a secret, agents Bob and Carol, and ticket #1 from Alice (a CC too)."""
    monkeypatch.delenv("MAILTICKET_AGENT_SECRET", raising=False)
    (tmp_path / "secret").write_bytes(SECRET + b"\n")
    helpdesk.write_config(
        f'[agents]\nsecret_file = "{tmp_path / "secret"}"\nauthserv_id = "mx.helpdesk.test"\n'
    )
    for address, name in ((BOB, "Bob"), ("carol@agents.test", "Carol Martin")):
        res = helpdesk.cli("agents", "add", address, "--name", name)
        assert res.exit_code == 0, res.output
    first = mail(cc="dave@customer.test")
    [res] = helpdesk.ingest(first)
    assert res["outcome"] == "created" and res["ticket"] == 1
    helpdesk.first_id = msgid(first)
    return helpdesk


def delivered(helpdesk, kind: str) -> list[email.message.EmailMessage]:
    """Deliver the outbox to its folder; the messages of that outbox kind (by recipient)."""
    rows = {r["message_id"] for r in helpdesk.outbox() if r["kind"] == kind}
    assert helpdesk.cli("outbox", "deliver").exit_code == 0
    out = []
    for path in sorted((helpdesk.root / "var" / "outgoing").glob("*.eml")):
        msg = email.message_from_bytes(path.read_bytes(), policy=default)
        if msg["Message-ID"] in rows:
            out.append(msg)
    return sorted(out, key=lambda m: str(m["To"]))


def kinds(helpdesk) -> list[str]:
    return sorted(r["kind"] for r in helpdesk.outbox())


def events(helpdesk, kind: str, number=1) -> list[dict]:
    return [e for e in helpdesk.show(number)["events"] if e["kind"] == kind]


def test_a_signed_reply_is_relayed_to_the_customer_threaded_with_only_the_agents_text(desk):
    [res] = desk.ingest(client_reply("Please restart it and tell me.\n\nBob", to=signed()))
    assert res["outcome"] == "agent-reply" and res["ticket"] == 1, res
    to_alice, to_dave = delivered(desk, "reply")
    assert to_alice["To"] == "alice@customer.test" and to_dave["To"] == "dave@customer.test"
    for msg in (to_alice, to_dave):
        assert msg["From"].addresses[0].addr_spec == HD  # never the agent's own address
        assert msg["Subject"] == "Re: [#1] Printer is broken"
        assert msg["In-Reply-To"] == desk.first_id and desk.first_id in msg["References"]
        assert msg["Thread-Index"] and msg["Cc"] == "dave@customer.test"
        assert msg["Auto-Submitted"] is None  # a person wrote it
        body = msg.get_content()
        assert "Please restart it" in body
        assert "Reply above this line" not in body and "wrote:" not in body and "does not print" not in body
    assert to_alice["Message-ID"] == to_dave["Message-ID"]
    shown = desk.show(1)
    [stored] = [m for m in shown["messages"] if m["kind"] == "agent-reply"]
    assert stored["direction"] == "out" and stored["from"] == BOB and "Please restart it" in stored["text"]
    assert stored["message_id"] == to_alice["Message-ID"]
    [stamp] = events(desk, "first-response")
    assert stamp["actor"] == BOB
    [relayed] = events(desk, "reply")
    assert relayed["actor"] == BOB
    # A second reply keeps the first response time; the customer's answer threads back.
    desk.ingest(client_reply("One more thing.", to=signed()))
    assert len(events(desk, "first-response")) == 1
    [back] = desk.ingest(mail(subject="Re: printer", in_reply_to=to_alice["Message-ID"], body="Done.\n"))
    assert back["outcome"] == "appended" and back["ticket"] == 1


def test_commands_only_send_nothing_to_the_customer_and_one_confirmation(desk):
    top = "#status pending\n#priority critical\n#assign Carol Martin\n#tag vip\n#frobnicate\n#merge 7"
    [res] = desk.ingest(client_reply(top, to=signed()))
    assert res["outcome"] == "commands", res
    assert "reply" not in kinds(desk)
    [confirmation] = delivered(desk, "confirmation")
    assert confirmation["To"] == BOB and "[#1]" in confirmation["Subject"]
    body = confirmation.get_content()
    for line in ("#status pending", "#priority critical", "#assign Carol Martin", "#tag vip"):
        assert f"done     {line}" in body, body
    assert "refused  #frobnicate: unknown command #frobnicate" in body
    assert "refused  #merge 7: no ticket #7" in body
    t = desk.show(1)
    assert (t["status"], t["priority"], t["assignee"], t["tags"]) == (
        "pending",
        "P2",
        "carol@agents.test",
        ["vip"],
    )
    for kind in ("status", "priority", "assignee", "tags"):
        [e] = events(desk, kind)
        assert e["actor"] == BOB, e
    [summary] = events(desk, "commands")
    assert summary["detail"]["refused"] == ["#frobnicate", "#merge 7"]


def test_commands_and_text_confirm_and_relay(desk):
    [res] = desk.ingest(client_reply("#status pending\n\nWe ordered the part.", to=signed()))
    assert res["outcome"] == "agent-reply"
    assert kinds(desk).count("confirmation") == 1 and kinds(desk).count("reply") == 2  # Alice, Dave
    [msg, _] = delivered(desk, "reply")
    assert "We ordered the part." in msg.get_content() and "#status" not in msg.get_content()
    assert desk.show(1)["status"] == "pending"


@pytest.mark.parametrize("how", ["#note line", "note address"])
def test_a_note_is_stored_and_never_sent(desk, how):
    top = (
        "#note\nCustomer is on the old firmware."
        if how == "#note line"
        else "Customer is on the old firmware."
    )
    to = signed(purpose="note" if how == "note address" else "reply")
    before = kinds(desk)
    [res] = desk.ingest(client_reply(top, to=to))
    assert res["outcome"] == "note", res
    assert "reply" not in kinds(desk) and "ack" in before
    [stored] = [m for m in desk.show(1)["messages"] if m["kind"] == "note"]
    assert stored["from"] == BOB and stored["text"] == "Customer is on the old firmware."
    [e] = events(desk, "note")
    assert e["actor"] == BOB
    assert all(
        r["to"] not in ("alice@customer.test", "dave@customer.test")
        for r in desk.outbox()
        if r["kind"] != "ack"
    )


def test_forged_agent_mail_relays_nothing_applies_nothing_acknowledges_nothing(desk):
    before = desk.outbox()
    [res] = desk.ingest(client_reply("#status closed\n#cc evil@attacker.test\n\nPay here.", to=HD))
    assert "forged" in res["reason"]
    t = desk.show(1)
    assert t["status"] == "new" and t["cc"] == ["dave@customer.test"]
    after = desk.outbox()
    new = [r for r in after if r["id"] not in {b["id"] for b in before}]
    assert all(r["kind"] not in ("reply", "ack", "confirmation") for r in new), new
    assert not any(r["to"] in ("alice@customer.test", "evil@attacker.test") for r in new)
    assert [e["detail"]["verdict"] for e in events(desk, "security")] == ["forged"]


def test_an_agents_out_of_office_is_recorded_not_relayed(desk):
    ooo = client_reply(
        "I am out of the office until Monday.",
        to=signed(),
        subject="Automatic reply: [#1] Printer is broken",
        headers={"Auto-Submitted": "auto-replied"},
    )
    [res] = desk.ingest(ooo)
    assert res["outcome"] == "suppressed" and res["ticket"] == 1, res
    assert "reply" not in kinds(desk) and "confirmation" not in kinds(desk)
    [stored] = [m for m in desk.show(1)["messages"] if m["kind"] == "auto-reply"]
    assert stored["from"] == BOB


def test_a_forward_opens_a_ticket_for_the_original_sender(desk):
    body = (
        "Can you look at this one?\n\n"
        "---------- Forwarded message ---------\n"
        "From: Erin Customer <erin@customer.test>\n"
        "Date: Mon, 2 Mar 2026 at 09:00\n"
        "Subject: Scanner jams\n"
        "To: Bob <bob@agents.test>\n\n"
        "The scanner jams on every page.\n"
    )
    results = "mx.helpdesk.test; dkim=pass header.d=agents.test"  # a fresh mail: no signed address
    fresh = mail(
        sender=f"Bob <{BOB}>",
        to=HD,
        subject="Fwd: Scanner jams",
        body=body,
        headers={"Authentication-Results": results},
    )
    [res] = desk.ingest(fresh)
    assert res["outcome"] == "created", res
    t = desk.show(res["ticket"])
    assert t["requester"] == "erin@customer.test" and t["subject"] == "Scanner jams"
    assert t["fields"] == {"channel": "email"}
    assert "The scanner jams" in t["messages"][0]["text"]
    [opened] = [e for e in t["events"] if e["kind"] == "opened"]
    assert opened["actor"] == BOB
    assert any(r["kind"] == "ack" and r["to"] == "erin@customer.test" for r in desk.outbox())


# --- the CLI verbs ------------------------------------------------------------------------


def test_cli_reply_note_set_open_record_the_agent(desk, tmp_path):
    body = tmp_path / "body.txt"
    body.write_text("We replaced the toner.\n", encoding="utf-8")
    res = desk.cli("ticket", "reply", "1", "--as", BOB, "--body", str(body), "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["message_id"]
    [msg, _] = delivered(desk, "reply")
    assert msg["In-Reply-To"] == desk.first_id and "We replaced the toner." in msg.get_content()

    res = desk.cli("ticket", "note", "1", "--as", "Carol Martin", "--body", "-", input=b"Checked the logs.\n")
    assert res.exit_code == 0, res.output

    res = desk.cli(
        "ticket",
        "set",
        "1",
        "--as",
        BOB,
        "--status",
        "pending",
        "--priority",
        "P1",
        "--assign",
        "Carol Martin",
        "--tier",
        "2",
        "--queue",
        "hardware",
        "--tag",
        "toner",
        "--field",
        "serial=SN123",
        "--json",
    )
    assert res.exit_code == 0, res.output
    assert all(o["ok"] for o in json.loads(res.output)["outcomes"])
    t = desk.show(1)
    assert (t["status"], t["priority"], t["assignee"], t["tier"], t["queue"]) == (
        "pending",
        "P1",
        "carol@agents.test",
        2,
        "hardware",
    )
    assert t["tags"] == ["toner"] and t["fields"]["serial"] == "SN123"
    actors = {e["kind"]: e["actor"] for e in t["events"]}
    assert actors["reply"] == BOB and actors["note"] == "carol@agents.test"
    assert actors["status"] == actors["assignee"] == actors["fields"] == BOB

    res = desk.cli(
        "ticket",
        "open",
        "--requester",
        "Frank@Customer.test",
        "--name",
        "Frank",
        "--subject",
        "Called about VPN",
        "--channel",
        "phone",
        "--as",
        BOB,
        "--body",
        "-",
        "--json",
        input=b"VPN drops every hour.\n",
    )
    assert res.exit_code == 0, res.output
    number = json.loads(res.output)["number"]
    t = desk.show(number)
    assert t["requester"] == "frank@customer.test" and t["fields"]["channel"] == "phone"
    assert [e["actor"] for e in t["events"] if e["kind"] == "opened"] == [BOB]
    assert any(r["kind"] == "ack" and r["to"] == "frank@customer.test" for r in desk.outbox())


def test_cli_refuses_a_non_agent_and_a_bad_value(desk):
    res = desk.cli("ticket", "note", "1", "--as", "alice@customer.test", "--body", "-", input=b"x\n")
    assert res.exit_code != 0 and "not an active agent" in res.output
    res = desk.cli("ticket", "set", "1", "--as", BOB, "--status", "bogus")
    assert res.exit_code != 0 and "#status" in res.output
    assert desk.show(1)["status"] == "new"


def test_merge_moves_the_mail_and_the_people_and_later_mail_follows(desk):
    """A customer wrote twice about one problem: #merge folds the second ticket into the
    first; its token, its thread and its requester all lead there afterwards."""
    second = mail(sender="erin@customer.test", subject="Printer again", body="Still broken.\n")
    [res] = desk.ingest(second)
    assert res["ticket"] == 2
    [res] = desk.ingest(client_reply("#merge 1", to=signed(ticket=2), subject="Re: [#2] Printer again"))
    assert res["outcome"] == "commands", res
    [confirmation] = delivered(desk, "confirmation")
    assert "done     #merge 1" in confirmation.get_content()
    gone, kept = desk.show(2), desk.show(1)
    assert (gone["status"], gone["merged_into"]) == ("closed", 1)
    assert [m["text"].strip() for m in gone["messages"]] == []
    assert any("Still broken." in m["text"] for m in kept["messages"])
    assert "erin@customer.test" in kept["cc"]  # the merged ticket's customer hears of it
    [merged] = events(desk, "merged", number=2)
    assert merged["actor"] == BOB and merged["detail"]["into"] == 1
    [merged_from] = events(desk, "merged-from", number=1)
    assert merged_from["detail"]["from"] == 2
    # Mail to the merged ticket's token, and a reply in its thread, land in #1.
    [by_token] = desk.ingest(mail(sender="erin@customer.test", subject="Re: [#2] Printer again"))
    [by_thread] = desk.ingest(mail(sender="erin@customer.test", subject="Re: Printer again",
                                   in_reply_to=msgid(second)))
    assert (by_token["outcome"], by_token["ticket"]) == ("appended", 1), by_token
    assert (by_thread["outcome"], by_thread["ticket"]) == ("appended", 1), by_thread
    # Merging again, into itself or into a closed ticket, is refused with the reason.
    res = desk.cli("ticket", "set", "2", "--as", BOB, "--merge-into", "1")
    assert res.exit_code != 0 and "merged into #1 already" in res.output
    res = desk.cli("ticket", "set", "1", "--as", BOB, "--merge-into", "1")
    assert res.exit_code != 0 and "cannot be merged into itself" in res.output


def test_resolving_tells_the_customer_once_how_to_reopen_or_with_the_agents_own_words(desk):
    [res] = desk.ingest(client_reply("#status resolved", to=signed()))
    assert res["outcome"] == "commands"
    [resolution] = delivered(desk, "resolution")
    assert resolution["To"] == "alice@customer.test" and "[#1]" in resolution["Subject"]
    assert "7 days" in resolution.get_content()  # the reopen window
    assert desk.show(1)["status"] == "resolved"
    [survey] = delivered(desk, "survey")  # and how was it?
    assert survey["To"] == "alice@customer.test" and "support+s.1.5." in survey.get_content()
    # A reply within the window reopens it; resolving with text sends that text, no template.
    desk.ingest(mail(subject="Re: [#1] Printer is broken", body="It broke again.\n"))
    assert desk.show(1)["status"] == "open"
    [res] = desk.ingest(client_reply("#status resolved\n\nReplaced the fuser; it prints now.", to=signed()))
    assert res["outcome"] == "agent-reply"
    assert kinds(desk).count("resolution") == 1
    assert kinds(desk).count("survey") == 1  # one survey per customer per 30 days
    replies = delivered(desk, "reply")
    assert replies and all("fuser" in m.get_content() for m in replies)
