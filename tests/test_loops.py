"""Mail that must not be dropped, and mail that must not be answered, through `ingest`.

Reused Message-IDs, colleagues in our own domain, the null envelope sender, our own
mail coming back (X-Loop), strangers answering our automatic mail, loops with other
mail systems (limits per domain and in all), and what we store of hostile headers
(huge subjects, NUL bytes): each on SQLite and PostgreSQL.
"""

from __future__ import annotations

from mailticket.notify import make_msgid

from mails import mail

RESENT = (b"Received: from relay2.customer.test by mx; Mon, 2 Mar 2026 10:05:00 +0000\r\n"
          b"Return-Path: <a@b.test>\r\n")


def acks(helpdesk) -> list[dict]:
    return [r for r in helpdesk.outbox() if r["kind"] == "ack"]


def event_kinds(helpdesk, number: int) -> list[str]:
    return [e["kind"] for e in helpdesk.show(number)["events"]]


# --- 1. a reused Message-ID ---------------------------------------------------------------


def test_reused_message_id_with_other_content_is_a_new_message(helpdesk):
    same = "<scan@printer.customer.test>"
    first = mail(subject="Scan job 1", message_id=same)
    other = mail(subject="Scan job 2", body="A different scan.\n", message_id=same)
    reply = mail(subject="Re: [#1] Scan job 1", body="And a reply.\n", message_id=same)
    [a], [b], [c] = helpdesk.ingest(first), helpdesk.ingest(other), helpdesk.ingest(reply)
    assert a["outcome"] == "created" and a["ticket"] == 1
    assert b["outcome"] == "created" and b["ticket"] == 2
    assert "reused" in b["reason"] and "inbox #1" in b["reason"]
    assert "message-id-reused" in event_kinds(helpdesk, 2)
    assert c["outcome"] == "appended" and c["ticket"] == 1 and "reused" in c["reason"]
    assert "message-id-reused" in event_kinds(helpdesk, 1)
    # Each of them resent by a relay (new trace headers, LF line endings) is a duplicate.
    results = helpdesk.ingest(RESENT + first, RESENT + other, (RESENT + reply).replace(b"\r\n", b"\n"))
    assert [(r["outcome"], r["ticket"]) for r in results] == [("duplicate", 1), ("duplicate", 2),
                                                               ("duplicate", 1)]


# --- 2. colleagues are customers ----------------------------------------------------------


def test_colleague_in_our_domain_is_a_customer_but_our_addresses_are_not(helpdesk):
    helpdesk.write_config('[smtp]\ndomains = ["acme.example"]\n', address="helpdesk@acme.example",
                          aliases=["it@acme.example"])
    [bob] = helpdesk.ingest(mail(sender="Bob <bob@acme.example>", to="helpdesk@acme.example"))
    assert bob["outcome"] == "created"
    assert [a["to"] for a in acks(helpdesk)] == ["bob@acme.example"]
    ours = helpdesk.ingest(mail(sender="helpdesk@acme.example", to="helpdesk@acme.example", subject="x"),
                           mail(sender="it@acme.example", to="helpdesk@acme.example", subject="y"))
    assert [r["outcome"] for r in ours] == ["suppressed", "suppressed"]
    assert len(acks(helpdesk)) == 1


# --- 3. the null envelope sender -------------------------------------------------------------


def test_null_envelope_sender_is_recorded_but_never_answered(helpdesk):
    results = helpdesk.ingest(b"Return-Path: <>\r\n" + mail(subject="Question"),
                              b"Return-Path: <MAILER-DAEMON>\r\n" + mail(subject="Another"),
                              b"Return-Path: <>\r\n" + mail(subject="Re: [#1] Question"))
    assert [(r["outcome"], r["ticket"]) for r in results] == [("created", 1), ("created", 2), ("appended", 1)]
    assert "null envelope sender" in results[0]["reason"]
    assert acks(helpdesk) == []
    assert "ack-skipped" in event_kinds(helpdesk, 1)
    [normal] = helpdesk.ingest(b"Return-Path: <alice@customer.test>\r\n" + mail(subject="Fine"))
    assert normal["outcome"] == "created" and len(acks(helpdesk)) == 1


# --- 4. loops with other mail systems -------------------------------------------------------


def test_our_mail_carries_x_loop_and_mail_with_our_x_loop_is_ours(helpdesk):
    helpdesk.ingest(mail(subject="Login fails"))
    helpdesk.cli("outbox", "deliver")
    [eml] = list((helpdesk.root / "var" / "outgoing").glob("*.eml"))
    assert "X-Loop: support@helpdesk.test" in eml.read_text()
    # A forwarder elsewhere sends our acknowledgement back under a stranger's From.
    back = mail(sender="fwd@elsewhere.test", subject="Fwd: [#1] Login fails",
                headers={"X-Loop": "<support@helpdesk.test>"})
    [res] = helpdesk.ingest(back)
    assert res["outcome"] == "suppressed" and "X-Loop" in res["reason"]
    assert len(acks(helpdesk)) == 1


def test_a_strangers_reply_to_our_mail_is_never_acknowledged(helpdesk):
    helpdesk.ingest(mail(subject="Printer"), mail(sender="carol@customer.test", subject="Scanner"))
    ack_of_1 = acks(helpdesk)[-1]["message_id"]
    assert acks(helpdesk)[-1]["ticket"] == 1
    # Names ticket 2 by token, replies to our mail of ticket 1: may not write to #2.
    [res] = helpdesk.ingest(mail(sender="desk-77@otherdesk.test", subject="Re: [#2] Scanner",
                                 in_reply_to=ack_of_1))
    assert res["outcome"] == "created" and res["ticket"] == 3
    assert helpdesk.show(3)["linked_to"] == 2
    assert "reply to our mail" in res["reason"]
    # No token, and an id of our own making that no ticket has (a cleaned-up database).
    ours = make_msgid("helpdesk.test")
    [res] = helpdesk.ingest(mail(sender="desk-78@otherdesk.test", subject="Re: Printer", references=ours))
    assert res["outcome"] == "created" and "reply to our mail" in res["reason"]
    assert len(acks(helpdesk)) == 2
    # A colleague's mail client in our domain makes ids of another shape: answered.
    helpdesk.ingest(mail(sender="dan@customer.test", subject="New", references="<a-b-c@helpdesk.test>"))
    assert len(acks(helpdesk)) == 3
    # The helpdesk moved to a new domain: its old ids are known as ours by the outbox.
    helpdesk.write_config(address="support@new-helpdesk.test")
    [res] = helpdesk.ingest(mail(sender="desk-79@otherdesk.test", subject="Re: [#2] Scanner",
                                 references=ack_of_1))
    assert res["outcome"] == "created" and "reply to our mail" in res["reason"]
    assert len(acks(helpdesk)) == 3


def test_looping_autoresponder_from_a_new_address_each_time_ends(helpdesk):
    """Another helpdesk answers each acknowledgement from a new address, without threading
    headers: each answer is a stranger quoting a token.  Without a per-domain limit each
    round made a ticket and an acknowledgement, for ever."""
    helpdesk.write_config(auto_reply_limit_domain=3)
    helpdesk.ingest(mail(sender="ticket-0@otherdesk.test", subject="Order 55"))
    counts = []
    for n in range(1, 7):
        ack = helpdesk.outbox()[0]  # newest first
        [res] = helpdesk.ingest(mail(sender=f"ticket-{n}@otherdesk.test", subject=f"Re: {ack['subject']}",
                                     body="We received your message.\n"))
        assert res["outcome"] == "created"
        counts.append(len(acks(helpdesk)))
    assert counts[-3:] == [3, 3, 3]  # the loop has ended: no new acknowledgements
    assert "domain otherdesk.test reached 3" in res["reason"]


def test_limit_on_all_automatic_mail(helpdesk):
    helpdesk.write_config(auto_reply_limit_total=2)
    results = helpdesk.ingest(*[mail(sender=f"u@domain{n}.test", subject=f"Problem {n}") for n in range(3)])
    assert [r["outcome"] for r in results] == ["created"] * 3
    assert len(acks(helpdesk)) == 2
    assert "all recipients reached 2" in results[2]["reason"]


# --- 6. 7. what we store -------------------------------------------------------------------


def test_huge_subject_is_capped_where_stored_and_sent(helpdesk):
    helpdesk.ingest(mail(subject="Help " + "x" * 200_000))
    t = helpdesk.show(1)
    assert t["subject"].startswith("Help xxx") and len(t["subject"]) <= 255
    [ack] = acks(helpdesk)
    assert ack["subject"].startswith("[#1] Help") and len(ack["subject"]) <= 300
    helpdesk.cli("outbox", "deliver")
    [eml] = list((helpdesk.root / "var" / "outgoing").glob("*.eml"))
    assert max(len(line) for line in eml.read_bytes().split(b"\r\n\r\n")[0].split(b"\r\n")) <= 998
    from mailticket.db import open_database
    from mailticket.models import Message

    db = open_database(helpdesk.db_url)
    try:
        assert max(len(m.subject) for m in Message.select()) <= 998
    finally:
        db.close()


def test_nul_bytes_in_headers_are_stored_the_same_on_every_backend(helpdesk):
    raw = (b"From: alice@customer.test\r\nTo: support@helpdesk.test\r\nSubject: Scan\r\n"
           b"Message-ID: <nul1@customer.test>\r\nMIME-Version: 1.0\r\n"
           b'Content-Type: multipart/mixed; boundary="B"\r\n\r\n'
           b"--B\r\nContent-Type: text/plain\r\n\r\nSee the scan.\r\n"
           b'--B\r\nContent-Type: application/p\x00df; name="scan.pdf"\r\n'
           b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--B--\r\n")
    [res] = helpdesk.ingest(raw)
    assert res["outcome"] == "created", res
    [message] = helpdesk.show(1)["messages"][:1]
    assert [a["content_type"] for a in message["attachments"]] == ["application/pdf"]
