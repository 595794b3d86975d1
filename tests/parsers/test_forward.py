"""Forwards as the main clients write them: the original's sender, subject and text,
and the forwarder's note; replies and mere mentions are not forwards."""

from __future__ import annotations

from email.message import EmailMessage

import pytest

from mailticket.parsers import forward, message

from . import mailbuild as mb

NOTE = "Alice, can you take this one?"
BODY = "Hello,\n\nmy printer is on fire.\n\nJane"
AGENT = {"From": "Bob Agent <bob@acme.example>", "To": "support@acme.example"}


def agent_mail(subject: str, *, text: str | None = None, html: str | None = None) -> bytes:
    headers = {**AGENT, "Subject": subject}
    if html is None:
        return mb.plain(text or "", headers)
    if text is None:
        return mb.html_only(html, headers)
    return mb.alternative(text, html, headers)


SIG = "\n\n-- \nBob Agent\nACME support"

CASES = [
    (
        "gmail",
        "Fwd: Printer on fire",
        NOTE + SIG + "\n\n---------- Forwarded message ---------\n"
        "From: Jane Doe <jane@example.com>\nDate: Mon, 5 Jan 2026 at 10:00\n"
        "Subject: Printer on fire\nTo: <bob@acme.example>\n\n\n" + BODY + "\n",
        "Mon, 5 Jan 2026 at 10:00",
    ),
    (
        "outlook-en",
        "FW: Printer on fire",
        NOTE + "\n\nBob\n\n________________________________\n"
        "From: Jane Doe <jane@example.com>\nSent: Monday, January 5, 2026 10:00 AM\n"
        "To: Bob Agent <bob@acme.example>\nCc: Tom <tom@example.com>\nSubject: Printer on fire\n\n" + BODY,
        "Monday, January 5, 2026 10:00 AM",
    ),
    (
        "outlook-en-original-message",
        "FW: Printer on fire",
        NOTE + "\n\n-----Original Message-----\nFrom: Jane Doe [mailto:jane@example.com]\n"
        "Sent: Monday, January 5, 2026 10:00 AM\nTo: Bob Agent\nSubject: Printer on fire\n\n" + BODY,
        "Monday, January 5, 2026 10:00 AM",
    ),
    (
        "outlook-fr",
        "TR: Printer on fire",
        NOTE + "\n\n________________________________\n"
        "De\u00a0: Jane Doe <jane@example.com>\nEnvoyé\u00a0: lundi 5 janvier 2026 10:00\n"
        "À\u00a0: Bob Agent <bob@acme.example>\nObjet\u00a0: Printer on fire\n\n" + BODY,
        "lundi 5 janvier 2026 10:00",
    ),
    (
        "outlook-nl",
        "FW: Printer on fire",
        NOTE + "\n\nVan: Jane Doe <jane@example.com>\nVerzonden: maandag 5 januari 2026 10:00\n"
        "Aan: Bob Agent <bob@acme.example>\nOnderwerp: Printer on fire\n\n" + BODY,
        "maandag 5 januari 2026 10:00",
    ),
    (
        "outlook-de",
        "WG: Printer on fire",
        NOTE + "\n\nVon: Jane Doe <jane@example.com>\nGesendet: Montag, 5. Januar 2026 10:00\n"
        "An: Bob Agent <bob@acme.example>\nBetreff: Printer on fire\n\n" + BODY,
        "Montag, 5. Januar 2026 10:00",
    ),
    (
        "apple-mail",
        "Fwd: Printer on fire",
        NOTE + "\n\nSent from my iPhone\n\nBegin forwarded message:\n\n"
        "From: Jane Doe <jane@example.com>\nSubject: Printer on fire\n"
        "Date: 5 January 2026 at 10:00:00 CET\nTo: bob@acme.example\n"
        "Reply-To: Jane Doe <jane@example.com>\n\n" + BODY,
        "5 January 2026 at 10:00:00 CET",
    ),
    (
        "apple-mail-quoted-fr",
        "Fwd: Printer on fire",
        NOTE
        + "\n\nDébut du message réexpédié :\n\n"
        + "".join(
            f"> {line}\n" if line else ">\n"
            for line in (
                "De: Jane Doe <jane@example.com>\nObjet: Printer on fire\n"
                "Date: 5 janvier 2026 à 10:00:00 UTC+1\nÀ: bob@acme.example\n\n" + BODY
            ).split("\n")
        ),
        "5 janvier 2026 à 10:00:00 UTC+1",
    ),
    (
        "thunderbird",
        "Fwd: Printer on fire",
        NOTE + "\n\n\n-------- Forwarded Message --------\n"
        "Subject: \tPrinter on fire\nDate: \tMon, 5 Jan 2026 10:00:00 +0100\n"
        'From: \t"Jane Doe" <jane@example.com>\nTo: \tbob@acme.example\n\n\n\n' + BODY + "\n",
        "Mon, 5 Jan 2026 10:00:00 +0100",
    ),
    (
        "thunderbird-de",
        "WG: Printer on fire",
        NOTE + "\n\n-------- Weitergeleitete Nachricht --------\n"
        "Betreff: \tPrinter on fire\nDatum: \tMon, 5 Jan 2026 10:00:00 +0100\n"
        "Von: \tJane Doe <jane@example.com>\nAn: \tbob@acme.example\n\n" + BODY,
        "Mon, 5 Jan 2026 10:00:00 +0100",
    ),
]


@pytest.mark.parametrize(("case", "subject", "text", "date"), CASES, ids=[c[0] for c in CASES])
def test_inline_forward_plain_text(case: str, subject: str, text: str, date: str) -> None:
    pm = message.parse(agent_mail(subject, text=text))
    found = forward.find(pm)
    assert found is not None
    assert (found.sender, found.name) == ("jane@example.com", "Jane Doe")
    assert found.subject == "Printer on fire"
    assert found.date == date
    assert found.text == BODY
    assert found.note.startswith(NOTE)
    assert "Jane" not in found.note and "Bob Agent" not in found.note  # signature cut


OUTLOOK_HTML = (
    "<html><head><style>p.MsoNormal{{margin:0cm}}</style></head><body lang=EN-US>"
    "<div class=WordSection1><p class=MsoNormal>{note}<o:p></o:p></p>"
    "<p class=MsoNormal><o:p>&nbsp;</o:p></p><div><div style='border:none;border-top:solid "
    "#E1E1E1 1.0pt;padding:3.0pt 0cm 0cm 0cm'><p class=MsoNormal><b>{f}</b> Jane Doe "
    "&lt;jane@example.com&gt;<br><b>{s}</b> {date}<br><b>{t}</b> Bob Agent "
    "&lt;bob@acme.example&gt;<br><b>{su}</b> Printer on fire<o:p></o:p></p></div></div>"
    "<p class=MsoNormal>Hello,<o:p></o:p></p><p class=MsoNormal>my printer is on fire."
    "</p><p class=MsoNormal>Jane</p></div></body></html>"
)
HTML_CASES = [
    ("outlook-html-en", "FW: Printer on fire", ("From:", "Sent:", "To:", "Subject:"), "5 1 2026"),
    (
        "outlook-html-fr",
        "TR: Printer on fire",
        ("De&nbsp;:", "Envoy&eacute;&nbsp;:", "&Agrave;&nbsp;:", "Objet&nbsp;:"),
        "lundi",
    ),
    ("outlook-html-nl", "FW: Printer on fire", ("Van:", "Verzonden:", "Aan:", "Onderwerp:"), "maandag"),
    ("outlook-html-de", "WG: Printer on fire", ("Von:", "Gesendet:", "An:", "Betreff:"), "Montag"),
]


@pytest.mark.parametrize(("case", "subject", "labels", "date"), HTML_CASES, ids=[c[0] for c in HTML_CASES])
def test_inline_forward_outlook_html(case: str, subject: str, labels: tuple[str, ...], date: str) -> None:
    f, s, t, su = labels
    html = OUTLOOK_HTML.format(note=NOTE, f=f, s=s, t=t, su=su, date=date)
    found = forward.find(message.parse(agent_mail(subject, html=html)))
    assert found is not None
    assert (found.sender, found.name, found.subject) == ("jane@example.com", "Jane Doe", "Printer on fire")
    assert found.date == date
    assert found.text == BODY
    assert found.note == NOTE


def test_inline_forward_gmail_html() -> None:
    html = (
        f'<div dir="ltr">{NOTE}<br><br><div class="gmail_quote"><div dir="ltr" class="gmail_attr">'
        '---------- Forwarded message ---------<br>From: <strong class="gmail_sendername" '
        'dir="auto">Jane Doe</strong> <span dir="auto">&lt;<a href="mailto:jane@example.com">'
        "jane@example.com</a>&gt;</span><br>Date: Mon, 5 Jan 2026 at 10:00<br>Subject: Printer "
        'on fire<br>To: &lt;bob@acme.example&gt;<br></div><br><br><div dir="ltr">Hello,<br><br>'
        "my printer is on fire.<br><br>Jane</div></div></div>"
    )
    pm = message.parse(agent_mail("Fwd: Printer on fire", html=html))
    found = forward.find(pm)
    assert found is not None
    assert (found.sender, found.name, found.subject) == ("jane@example.com", "Jane Doe", "Printer on fire")
    assert (found.date, found.text, found.note) == ("Mon, 5 Jan 2026 at 10:00", BODY, NOTE)


def test_attached_message_rfc822() -> None:
    original = EmailMessage()
    original["From"] = "=?utf-8?q?Jos=C3=A9_P=C3=A9rez?= <Jose@Example.com>"
    original["To"] = "bob@acme.example"
    original["Subject"] = "Imprimante en feu"
    original["Date"] = "Mon, 05 Jan 2026 10:00:00 +0100"
    original.set_content("Bonjour,\n\nmon imprimante brûle.\n")
    outer = EmailMessage()
    for key, value in {**AGENT, "Subject": "FW: Imprimante en feu"}.items():
        outer[key] = value
    outer.set_content(NOTE + "\n\n-- \nBob")
    outer.add_attachment(original)
    pm = message.parse(outer.as_bytes())
    found = forward.find(pm)
    assert found is not None
    assert (found.sender, found.name) == ("jose@example.com", "José Pérez")
    assert (found.subject, found.date) == ("Imprimante en feu", "Mon, 05 Jan 2026 10:00:00 +0100")
    assert found.text == "Bonjour,\n\nmon imprimante brûle."
    assert found.note == NOTE


def test_forward_rule_is_no_longer_part_of_the_new_text() -> None:
    pm = message.parse(agent_mail("Fwd: Printer on fire", text=CASES[0][2]))
    assert pm.new_text == NOTE


@pytest.mark.parametrize(
    ("subject", "text"),
    [
        # Outlook's reply: the same header block, under "RE:".
        (
            "RE: Printer on fire",
            "Still broken.\n\n________________________________\nFrom: Jane Doe <jane@example.com>\n"
            "Sent: Monday, January 5, 2026 10:00\nTo: Bob <bob@acme.example>\nSubject: Printer\n\n" + BODY,
        ),
        # Gmail's reply, which quotes an old forward.
        (
            "Re: Printer on fire",
            "Done.\n\nOn Mon, 5 Jan 2026 at 10:00, Jane Doe <jane@example.com> wrote:\n\n"
            "> ---------- Forwarded message ---------\n> From: Tom <tom@example.com>\n"
            "> Date: Sun, 4 Jan 2026\n> Subject: x\n\n> old text\n",
        ),
        # A mail that only talks about forwarding.
        (
            "Fwd: question",
            "I forwarded your message to Alice.\nForwarded message: see below\n"
            "From: the sales team, with thanks.",
        ),
        # A forward rule with no readable original under it.
        ("Fwd: x", "note\n\n---------- Forwarded message ---------\n\nsome text\n"),
    ],
    ids=["outlook-reply", "gmail-reply-quoting-a-forward", "mentions-forwarded", "rule-without-headers"],
)
def test_not_a_forward(subject: str, text: str) -> None:
    assert forward.find(message.parse(agent_mail(subject, text=text))) is None
