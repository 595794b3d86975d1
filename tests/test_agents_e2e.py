"""An agent works a ticket from their mail client, end to end through `mailticket run`.

The real daemon on both backends: mail comes in over its SMTP listener, goes out
through the outbox (the folder transport, and a real aiosmtpd smarthost once).  A
customer writes, a rule assigns the ticket to Bob, Bob is notified with a signed
Reply-To and answers from Outlook, Gmail (French), Apple Mail or a phone, quoting the
notification; the customer gets only Bob's text, threaded, from the helpdesk; her answer
threads back and notifies Bob again.  Notes and commands never reach the customer;
forged agent mail and an agent's out-of-office change and send nothing.
"""

from __future__ import annotations

import email
import smtplib
from datetime import datetime, timezone
from email.message import EmailMessage
from email.policy import default

import pytest
from helpers import wait_for
from mails import mail, msgid
from test_daemon import DaemonProc, tickets_of
from test_outbox import Smarthost

from mailticket import auth

SECRET = b"s3cret-for-e2e"
HD = "support@helpdesk.test"
ALICE = "alice@customer.test"
BOB = "bob@agents.test"
SUBJECT = "[#1] Printer is broken"
ANSWER = "Please switch it off and on again, then tell me if it prints."


class Desk:
    """The running daemon, its helpdesk, and the mail it sent (folder or smarthost)."""

    def __init__(self, helpdesk, secret_file, smarthost: Smarthost | None = None) -> None:
        self.hd = helpdesk
        self.smarthost = smarthost
        extra = f'[agents]\nsecret_file = "{secret_file}"\n'
        if smarthost:
            extra += f'[outgoing]\ntransport = "smtp"\nhost = "127.0.0.1"\nport = {smarthost.port}\n'
        self.daemon = DaemonProc(helpdesk, extra)
        res = helpdesk.cli("agents", "add", BOB, "--name", "Bob")
        assert res.exit_code == 0, res.output
        helpdesk.rule_file("10-printers.yaml", """
            - name: printers
              when: {subject: {contains: printer}}
              then: {assignee: bob@agents.test}
        """)

    def send(self, raw: bytes, *, mail_from: str, rcpt: str = HD) -> None:
        with smtplib.SMTP("127.0.0.1", self.daemon.smtp_port, timeout=10) as s:
            s.sendmail(mail_from, [rcpt], raw)

    def sent(self) -> list[EmailMessage]:
        """Every message the outbox handed over so far, oldest first."""
        if self.smarthost:
            raws = list(self.smarthost.received)
        else:
            folder = self.hd.root / "var" / "outgoing"
            raws = [p.read_bytes() for p in sorted(folder.glob("*.eml"), key=lambda p: p.stat().st_mtime_ns)]
        return [email.message_from_bytes(raw, policy=default) for raw in raws]

    def sent_to(self, to: str, kind: str) -> list[EmailMessage]:
        """The messages of that outbox kind handed over for `to`."""
        ids = {r["message_id"] for r in self.hd.outbox() if r["kind"] == kind and r["to"] == to}
        # strip: a long header is folded right after its colon, and the parser keeps the space
        return [m for m in self.sent() if m["Message-ID"].strip() in ids and to in str(m["To"])]

    def wait_sent(self, to: str, kind: str, count: int) -> list[EmailMessage]:
        def enough():
            got = self.sent_to(to, kind)
            return got if len(got) >= count else None

        return wait_for(enough, what=f"{count} {kind} message(s) to {to}")

    def rows_to(self, to: str) -> list[str]:
        return sorted(r["kind"] for r in self.hd.outbox() if r["to"] == to)

    def messages(self, kind: str) -> list[dict]:
        return [m for m in self.hd.show(1)["messages"] if m["kind"] == kind]

    def events(self, kind: str) -> list[dict]:
        return [e for e in self.hd.show(1)["events"] if e["kind"] == kind]

    def open_ticket(self) -> tuple[str, EmailMessage]:
        """Alice writes; the ticket is Bob's; his notification (signed Reply-To checked)."""
        first = mail(body="Hello,\n\nmy printer does not print.\n\nAlice\n")
        self.send(first, mail_from=ALICE)
        [note] = self.wait_sent(BOB, "notification", 1)
        assert note["Subject"] == SUBJECT and note["Auto-Submitted"] == "auto-generated"
        body = note.get_content()
        assert "my printer does not print." in body and "Assignee:  bob@agents.test" in body
        signed = auth.verify(
            [note["Reply-To"]], BOB, now=datetime.now(timezone.utc), secret=SECRET, helpdesk_address=HD
        )
        assert signed is not None and signed.valid and (signed.purpose, signed.ticket) == ("reply", 1)
        return msgid(first), note


@pytest.fixture
def secret_file(tmp_path, monkeypatch):
    monkeypatch.delenv("MAILTICKET_AGENT_SECRET", raising=False)
    path = tmp_path / "secret"
    path.write_bytes(SECRET + b"\n")
    return path


@pytest.fixture
def desk(helpdesk, secret_file):
    d = Desk(helpdesk, secret_file)
    d.daemon.start()
    yield d
    d.daemon.stop()


# --- how each client answers a notification -----------------------------------------------


def outlook(top: str, note: EmailMessage) -> tuple[str, str]:
    """Outlook (English): the text, a rule, a header block, the notification unquoted."""
    block = (
        "________________________________\n"
        f"From: Test Support <{HD}>\n"
        "Sent: Monday, March 2, 2026 10:00 AM\n"
        f"To: Bob <{BOB}>\n"
        f"Subject: {note['Subject']}\n\n"
    )
    return f"RE: {note['Subject']}", f"{top}\n\n{block}{note.get_content()}"


def gmail_fr(top: str, note: EmailMessage) -> tuple[str, str]:
    """Gmail in French: the text, "Le ... a écrit :", the notification `>`-quoted."""
    attribution = f"Le lun. 2 mars 2026 à 10:00, Test Support <{HD}> a écrit :"
    return f"Re: {note['Subject']}", f"{top}\n\n{attribution}\n\n{quote(note)}"


def quote(note: EmailMessage) -> str:
    return "".join(f"> {line}\n" if line else ">\n" for line in note.get_content().splitlines())


def apple_mail(top: str, note: EmailMessage) -> tuple[str, str]:
    """Apple Mail: the text, "On ..., at ..., ... wrote:", the notification `>`-quoted."""
    attribution = f"On 2 Mar 2026, at 10:00, Test Support <{HD}> wrote:"
    return f"Re: {note['Subject']}", f"{top}\n\n{attribution}\n\n{quote(note)}"


def iphone(top: str, note: EmailMessage) -> tuple[str, str]:
    """A phone: the text, "Sent from my iPhone", then the attribution and notification quoted."""
    attribution = f"> On 2 Mar 2026, at 10:00, Test Support <{HD}> wrote:\n>\n"
    return f"Re: {note['Subject']}", f"{top}\n\nSent from my iPhone\n\n{attribution}{quote(note)}"


CLIENTS = {"outlook": outlook, "gmail-fr": gmail_fr, "apple-mail": apple_mail, "iphone": iphone}


def agent_reply(top: str, note: EmailMessage, client=gmail_fr, **kw) -> bytes:
    subject, body = client(top, note)
    return mail(
        sender=f"Bob <{BOB}>",
        to=str(note["Reply-To"]),
        subject=subject,
        body=body,
        in_reply_to=note["Message-ID"],
        references=note["Message-ID"],
        **kw,
    )


# --- the tests ----------------------------------------------------------------------------


def reply_and_thread_back(d: Desk, client) -> None:
    first_id, note = d.open_ticket()
    d.send(agent_reply(ANSWER, note, client), mail_from=BOB, rcpt=str(note["Reply-To"]))
    [relayed] = d.wait_sent(ALICE, "reply", 1)
    assert relayed["From"].addresses[0].addr_spec == HD  # never the agent's own address
    assert relayed["Subject"] == f"Re: {SUBJECT}"
    assert relayed["In-Reply-To"].strip() == first_id and first_id in relayed["References"]
    assert relayed.get_content().strip() == ANSWER  # only Bob's text: no quote, no stamp
    assert d.rows_to(ALICE) == ["ack", "reply"]
    [stored] = d.messages("agent-reply")
    assert stored["from"] == BOB and stored["direction"] == "out"

    # Alice answers the relayed mail: it threads into #1 and Bob hears of it, with the history.
    d.send(
        mail(subject=f"Re: {SUBJECT}", in_reply_to=relayed["Message-ID"], body="It prints again, thanks!\n"),
        mail_from=ALICE,
    )
    _, again = d.wait_sent(BOB, "notification", 2)
    assert len(tickets_of(d.hd)) == 1 and len(d.messages("customer")) == 2
    text, history = again.get_content().split("History, newest first:")
    assert "It prints again, thanks!" in text
    assert history.index(ANSWER) < history.index("my printer does not print.")
    assert again["In-Reply-To"].strip() == note["Message-ID"].strip()
    assert d.rows_to(ALICE) == ["ack", "reply"]  # her own answer is not acknowledged again


@pytest.mark.parametrize("client", CLIENTS.values(), ids=CLIENTS.keys())
def test_an_agents_reply_from_their_client_reaches_the_customer_and_her_answer_threads_back(desk, client):
    reply_and_thread_back(desk, client)


def test_the_same_through_a_real_smarthost(helpdesk, secret_file):
    host = Smarthost()
    host.start()
    d = Desk(helpdesk, secret_file, smarthost=host)
    try:
        d.daemon.start()
        reply_and_thread_back(d, outlook)
        assert all(env[0] == HD for env in host.sink.envelopes)  # the helpdesk's return path
    finally:
        d.daemon.stop()
        host.stop()


def test_a_note_and_commands_never_reach_the_customer(desk):
    _, note = desk.open_ticket()
    reply_to = str(note["Reply-To"])
    desk.send(agent_reply("#note\nShe is on the old firmware.", note), mail_from=BOB, rcpt=reply_to)
    [stored] = wait_for(lambda: desk.messages("note"), what="the note")
    assert stored["from"] == BOB and stored["text"] == "She is on the old firmware."

    top = "#status pending\n#priority P2\n#frobnicate"
    desk.send(agent_reply(top, note, outlook), mail_from=BOB, rcpt=reply_to)
    [confirmation] = desk.wait_sent(BOB, "confirmation", 1)
    body = confirmation.get_content()
    assert "done     #status pending" in body and "done     #priority P2" in body
    assert "refused  #frobnicate: unknown command #frobnicate" in body
    t = desk.hd.show(1)
    assert (t["status"], t["priority"]) == ("pending", "P2")
    assert desk.rows_to(BOB).count("confirmation") == 1  # one, for the commands; none for the note
    assert desk.rows_to(ALICE) == ["ack"]
    assert [m["Subject"] for m in desk.sent() if ALICE in str(m["To"])] == [SUBJECT]  # the ack alone


def test_forged_agent_mail_and_an_out_of_office_send_nothing(desk):
    _, note = desk.open_ticket()
    # Bob's From, but to the plain helpdesk address: no signature, so not Bob's.
    forged = mail(sender=f"Bob <{BOB}>", subject=f"Re: {SUBJECT}", body="#status closed\n\nPay here.\n")
    desk.send(forged, mail_from=BOB)
    [security] = wait_for(lambda: desk.events("security"), what="the security event")
    assert security["detail"]["verdict"] == "forged"
    assert desk.hd.show(1)["status"] == "new"

    # Bob's out-of-office answers the notification, to its signed Reply-To.
    before = desk.hd.outbox()
    ooo = agent_reply(
        "I am out of the office until Monday.",
        note,
        headers={"Auto-Submitted": "auto-replied"},
    )
    desk.send(ooo, mail_from=BOB, rcpt=str(note["Reply-To"]))
    [stored] = wait_for(lambda: desk.messages("auto-reply"), what="the out-of-office on the ticket")
    assert stored["from"] == BOB
    assert desk.hd.outbox() == before  # nothing to anyone
    assert desk.rows_to(ALICE) == ["ack"]
    assert not [r for r in before if r["kind"] in ("reply", "confirmation")]
