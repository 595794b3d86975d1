"""End to end through `mailticket ingest`: the spine on both backends."""

from __future__ import annotations

import json
import mailbox
import subprocess
import sys

import pytest
from mails import bounce_for, mail, msgid

from mailticket.app import load_config, open_app
from mailticket.ingest import EX_TEMPFAIL, BadInput, Summary, store_and_process


def test_new_ticket_is_created_and_acknowledged(helpdesk):
    [res] = helpdesk.ingest(mail(subject="Printer is broken"))
    assert res["outcome"] == "created"
    assert res["ticket"] == 1
    t = helpdesk.show(1)
    assert t["subject"] == "Printer is broken"
    assert t["status"] == "new"
    assert t["requester"] == "alice@customer.test"
    first = t["messages"][0]
    assert first["direction"] == "in" and first["kind"] == "customer"
    assert "my printer does not print" in first["text"]
    [ack] = helpdesk.outbox()
    assert ack["kind"] == "ack" and ack["to"] == "alice@customer.test"
    assert "[#1]" in ack["subject"]


def test_ack_is_delivered_to_the_folder_with_rfc3834_headers(helpdesk):
    original = mail(subject="Login fails", headers={"Thread-Index": "AdgAAAAAAAAAAAAAAAAAAAAAAAAAAA=="})
    helpdesk.ingest(original)
    res = helpdesk.cli("outbox", "deliver")
    assert res.exit_code == 0 and "1 sent" in res.output
    [eml] = list((helpdesk.root / "var" / "outgoing").glob("*.eml"))
    text = eml.read_text()
    assert "Auto-Submitted: auto-replied" in text
    assert "From: Test Support <support@helpdesk.test>" in text  # the helpdesk, never an agent
    assert f"In-Reply-To: {msgid(original)}" in text
    assert f"References: {msgid(original)}" in text
    assert "Subject: [#1] Login fails" in text
    assert "@helpdesk.test>" in text.split("Message-ID:", 1)[1].split("\n", 1)[0]
    assert "Thread-Index: AdgAAAAAAAAAAAAAAAAAAAAAAAAA" in text  # the parent's 22 bytes + 5 of ours
    assert helpdesk.outbox()[0]["state"] == "sent"


def test_reply_with_token_appends(helpdesk):
    helpdesk.ingest(mail(subject="Printer is broken"))
    [res] = helpdesk.ingest(mail(subject="RE: AW: [#1] Printer is broken", body="It is model X200.\n"))
    assert res == {"message_id": res["message_id"], "outcome": "appended", "ticket": 1, "reason": None}
    t = helpdesk.show(1)
    assert [m["kind"] for m in t["messages"]] == ["customer", "system", "customer"]
    assert len(helpdesk.outbox()) == 1  # replies are not acknowledged


def test_reply_by_references_alone(helpdesk):
    first = mail(subject="VPN down")
    helpdesk.ingest(first)
    [res] = helpdesk.ingest(mail(subject="Re: VPN down", in_reply_to=msgid(first), references=msgid(first)))
    assert res["outcome"] == "appended" and res["ticket"] == 1


def test_reply_to_our_acknowledgement_threads_by_references(helpdesk):
    helpdesk.ingest(mail(subject="VPN down"))
    ack_id = helpdesk.outbox()[0]["message_id"]
    [res] = helpdesk.ingest(mail(subject="Re: something else", references=ack_id))
    assert res["outcome"] == "appended" and res["ticket"] == 1


def test_duplicate_is_not_a_second_ticket(helpdesk):
    raw = mail()
    helpdesk.ingest(raw)
    [res] = helpdesk.ingest(raw)
    assert res["outcome"] == "duplicate" and res["ticket"] == 1
    assert len(json.loads(helpdesk.cli("ticket", "list", "--json").output)) == 1


def test_duplicate_without_message_id_same_bytes(helpdesk):
    raw = mail(message_id=None)
    [a] = helpdesk.ingest(raw)
    [b] = helpdesk.ingest(b"Received: from relay2 by mx; Mon, 2 Mar 2026 10:00:05 +0000\r\n" + raw)
    assert a["outcome"] == "created" and b["outcome"] == "duplicate"


def test_one_message_to_two_support_addresses_is_one_ticket(helpdesk):
    raw = mail(to="support@helpdesk.test", cc="sales@helpdesk.test, bob@customer.test")
    copy = b"Delivered-To: sales@helpdesk.test\r\n" + raw
    results = helpdesk.ingest(raw, copy)
    assert [r["outcome"] for r in results] == ["created", "duplicate"]
    t = helpdesk.show(1)
    assert "bob@customer.test" in t["cc"]


def test_stranger_with_token_gets_a_linked_ticket(helpdesk):
    helpdesk.ingest(mail(subject="My invoice"))
    [res] = helpdesk.ingest(mail(sender="mallory@evil.test", subject="Re: [#1] My invoice"))
    assert res["outcome"] == "created" and res["ticket"] == 2
    t2 = helpdesk.show(2)
    assert t2["linked_to"] == 1 and t2["requester"] == "mallory@evil.test"
    assert len(helpdesk.show(1)["messages"]) == 2  # the customer's and our ack: nothing of mallory


def test_cc_may_write_with_token(helpdesk):
    helpdesk.ingest(mail(subject="Outage", cc="bob@customer.test"))
    [res] = helpdesk.ingest(mail(sender="bob@customer.test", subject="Re: [#1] Outage"))
    assert res["outcome"] == "appended" and res["ticket"] == 1


def test_auto_reply_is_never_acknowledged(helpdesk):
    helpdesk.ingest(mail(subject="Help"))
    ooo = mail(subject="Automatic reply: [#1] Help", headers={"Auto-Submitted": "auto-replied"})
    [res] = helpdesk.ingest(ooo)
    assert res["outcome"] == "suppressed" and res["ticket"] == 1
    [res2] = helpdesk.ingest(mail(subject="Out of office", headers={"Auto-Submitted": "auto-replied"}))
    assert res2["outcome"] == "suppressed" and res2["ticket"] is None
    assert len(helpdesk.outbox()) == 1


def test_bulk_mail_gets_a_ticket_but_no_ack(helpdesk):
    [res] = helpdesk.ingest(mail(subject="Newsletter", headers={"Precedence": "bulk", "List-Id": "<news.vendor.test>"}))
    assert res["outcome"] == "created"
    assert helpdesk.outbox() == []


def test_mail_from_ourselves_is_suppressed(helpdesk):
    [res] = helpdesk.ingest(mail(sender="support@helpdesk.test", subject="loop"))
    assert res["outcome"] == "suppressed"
    assert helpdesk.outbox() == []


def test_bounce_is_recorded_on_its_ticket(helpdesk):
    helpdesk.ingest(mail(subject="Help", sender="gone@customer.test"))
    helpdesk.cli("outbox", "deliver")
    [eml] = list((helpdesk.root / "var" / "outgoing").glob("*.eml"))
    [res] = helpdesk.ingest(bounce_for(eml.read_bytes()))
    assert res["outcome"] == "bounce" and res["ticket"] == 1
    assert helpdesk.show(1)["messages"][-1]["kind"] == "bounce"
    assert len(helpdesk.outbox()) == 1


def test_rate_limit_on_automatic_mail(helpdesk):
    helpdesk.write_config(auto_reply_limit=3)
    results = helpdesk.ingest(*[mail(subject=f"Problem {n}") for n in range(5)])
    assert [r["outcome"] for r in results] == ["created"] * 5
    assert len(helpdesk.outbox()) == 3
    assert "automatic mails" in results[4]["reason"]


def test_reply_reopens_pending_ticket_and_closed_ticket_opens_new(helpdesk):
    from mailticket.db import open_database
    from mailticket.models import Ticket

    helpdesk.ingest(mail(subject="Help"))
    db = open_database(helpdesk.db_url)
    Ticket.update(status="pending").where(Ticket.number == 1).execute()
    db.close()
    helpdesk.ingest(mail(subject="Re: [#1] Help"))
    assert helpdesk.show(1)["status"] == "open"
    db = open_database(helpdesk.db_url)
    Ticket.update(status="closed").where(Ticket.number == 1).execute()
    db.close()
    [res] = helpdesk.ingest(mail(subject="Re: [#1] Help"))
    assert res["outcome"] == "created" and res["ticket"] == 2
    assert helpdesk.show(2)["linked_to"] == 1


def test_mbox_and_maildir_and_stdin(helpdesk, tmp_path):
    box = mailbox.mbox(tmp_path / "in.mbox")
    for n in range(3):
        box.add(mail(subject=f"mbox {n}"))
    box.close()
    md = mailbox.Maildir(tmp_path / "md")
    md.add(mail(subject="maildir 1"))
    md.close()
    res = helpdesk.cli("ingest", "--json", str(tmp_path / "in.mbox"), str(tmp_path / "md"))
    lines = [json.loads(x) for x in res.output.splitlines()]
    assert [x["outcome"] for x in lines] == ["created"] * 4
    res = helpdesk.cli("ingest", "--json", "-", input=b"From MAILER-DAEMON Mon Mar  2 10:00:00 2026\n" + mail(subject="stdin"))
    assert json.loads(res.output)["ticket"] == 5
    assert helpdesk.show(5)["subject"] == "stdin"


def test_mbox_from_line_sender_becomes_return_path(helpdesk, tmp_path):
    box = mailbox.mbox(tmp_path / "in.mbox")
    delivered = mailbox.mboxMessage(mail(subject="delivered"))
    delivered.set_from("bob@customer.test", (2026, 3, 2, 10, 0, 0, 0, 61, 0))
    box.add(delivered)
    box.add(mail(subject="saved"))  # Python's mailbox writes "From MAILER-DAEMON ...": no sender
    box.close()
    res = helpdesk.cli("ingest", "--json", str(tmp_path / "in.mbox"))
    assert [json.loads(x)["outcome"] for x in res.output.splitlines()] == ["created"] * 2
    first = helpdesk.cli("quarantine", "show", "--raw", "1").stdout_bytes
    second = helpdesk.cli("quarantine", "show", "--raw", "2").stdout_bytes
    assert first.startswith(b"Return-Path: <bob@customer.test>\n")
    assert b"Return-Path" not in second and not second.startswith(b"From ")
    assert len(helpdesk.outbox()) == 2  # both acknowledged: the placeholder is not <>


def test_broken_message_is_a_ticket_or_quarantined_never_a_crash(helpdesk):
    junk = [b"", b"\x00\xff garbage", b"Subject: =?x-unknown?q?caf=E9?=\r\n\r\n\xe9t\xe9\r\n",
            b"From: <>\r\nContent-Type: multipart/mixed; boundary=X\r\n\r\n--X\r\nbroken"]
    results = helpdesk.ingest(*junk)
    assert len(results) == 4
    assert all(r["outcome"] in ("created", "quarantined", "suppressed") for r in results)


def test_quarantine_list_show_retry(helpdesk, monkeypatch):
    from mailticket import pipeline

    def boom(run, env):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(pipeline, "STEPS", (*pipeline.STEPS[:3], ("thread", boom), *pipeline.STEPS[4:]))
    monkeypatch.setattr(pipeline.Pipeline.__init__, "__defaults__", (pipeline.STEPS,))
    [res] = helpdesk.ingest(mail(subject="Unlucky"))
    assert res["outcome"] == "quarantined" and "disk on fire" in res["reason"]
    listed = json.loads(helpdesk.cli("quarantine", "list", "--json").output)
    assert listed[0]["step"] == "thread" and "disk on fire" in listed[0]["reason"]
    assert "Unlucky" in helpdesk.cli("quarantine", "show", str(listed[0]["id"])).output
    monkeypatch.undo()
    out = helpdesk.cli("quarantine", "retry", "--json").output
    assert json.loads(out)["outcome"] == "created"
    assert json.loads(helpdesk.cli("quarantine", "list", "--json").output) == []


def test_console_script_exit_75_when_the_database_cannot_store(tmp_path):
    from mails import mail as make

    cfg = tmp_path / "mailticket.toml"
    cfg.write_text('[database]\nurl = "postgresql://postgres@127.0.0.1:1/nothing"\n')
    eml = tmp_path / "m.eml"
    eml.write_bytes(make())
    proc = subprocess.run([sys.executable, "-m", "mailticket.cli", "--config", str(cfg), "ingest", str(eml)],
                          capture_output=True, timeout=60)
    assert proc.returncode == 75, proc.stderr
    assert b"Traceback" not in proc.stderr


def test_store_and_process_is_ingest_without_the_command_line(helpdesk, tmp_path):
    eml, folder = tmp_path / "m.eml", tmp_path / "not-a-maildir"
    eml.write_bytes(mail(subject="from the library"))
    folder.mkdir()
    app = open_app(load_config(str(helpdesk.config_path)))
    try:
        seen = []
        done = store_and_process(app, (str(eml),), batch=10, on_result=seen.append)
        assert (done.counts, done.exit_code, done.problem) == ({"created": 1}, 0, None)
        assert [r.outcome for r in seen] == ["created"]
        with pytest.raises(BadInput, match="not a Maildir"):  # the command's usage error (2)
            store_and_process(app, (str(eml), str(folder)), batch=1)
    finally:
        app.close()
    not_stored = Summary(not_stored=2, why="database locked")
    assert not_stored.exit_code == EX_TEMPFAIL
    assert not_stored.problem == "mailticket: 2 message(s) not stored, try again later: database locked"
