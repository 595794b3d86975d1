"""Replies as the main clients write them, in English, French, Dutch and German.

Each case: (id, kind, body, expected new text).  `kind` is "plain" (a text/plain body)
or "html" (an HTML-only body).  Used by test_quotes.py, and by the comparison with
mail-parser-reply (see the quotes module docstring).
"""

from __future__ import annotations

Q = "> Hello Jane,\n> Please restart the printer.\n>\n> Support\n"
QFR = "> Bonjour Jane,\n> Redémarrez l'imprimante.\n"
QNL = "> Hallo Jane,\n> Herstart de printer.\n"
QDE = "> Hallo Jane,\n> Starten Sie den Drucker neu.\n"
OLD = "Hello Jane,\nPlease restart the printer.\n\nSupport\n"

PLAIN_CASES: list[tuple[str, str, str, str]] = [
    # -- Gmail ----------------------------------------------------------------------
    (
        "gmail-en",
        "plain",
        "Thanks, it works now.\n\nOn Mon, 5 Jan 2026 at 10:00, Support "
        "<support@helpdesk.example> wrote:\n\n" + Q,
        "Thanks, it works now.",
    ),
    (
        "gmail-en-wrapped-attribution",
        "plain",
        "Thanks!\n\nOn Mon, 5 Jan 2026 at 10:00, Helpdesk Support Team of ACME Corporation <\n"
        "support@helpdesk.example> wrote:\n\n" + Q,
        "Thanks!",
    ),
    (
        "gmail-fr",
        "plain",
        "Merci, ça marche.\n\nLe lun. 5 janv. 2026 à 10:00, Support "
        "<support@helpdesk.example> a écrit :\n\n" + QFR,
        "Merci, ça marche.",
    ),
    (
        "gmail-fr-wrapped",
        "plain",
        "Merci.\n\nLe lun. 5 janv. 2026 à 10:00, Service clients de la société ACME <\n"
        "support@helpdesk.example> a écrit :\n\n" + QFR,
        "Merci.",
    ),
    (
        "gmail-nl",
        "plain",
        "Bedankt, het werkt.\n\nOp ma 5 jan. 2026 om 10:00 schreef Support "
        "<support@helpdesk.example>:\n\n" + QNL,
        "Bedankt, het werkt.",
    ),
    (
        "gmail-de",
        "plain",
        "Danke, es geht wieder.\n\nAm Mo., 5. Jan. 2026 um 10:00 Uhr schrieb Support "
        "<support@helpdesk.example>:\n\n" + QDE,
        "Danke, es geht wieder.",
    ),
    (
        "gmail-de-wrapped",
        "plain",
        "Danke.\n\nAm Mo., 5. Jan. 2026 um 10:00 Uhr schrieb Kundendienst der ACME GmbH <\n"
        "support@helpdesk.example>:\n\n" + QDE,
        "Danke.",
    ),
    # -- Outlook ----------------------------------------------------------------------
    (
        "outlook-en-original-message",
        "plain",
        "Hi, still broken.\n\nJane\n\n-----Original Message-----\n"
        "From: Support <support@helpdesk.example>\nSent: Monday, January 5, 2026 10:00 AM\n"
        "To: Jane Doe <jane@example.com>\nSubject: RE: Printer on fire [#42]\n\n" + OLD,
        "Hi, still broken.\n\nJane",
    ),
    (
        "outlook-en-header-block",
        "plain",
        "Still broken.\n\n________________________________\n"
        "From: Support <support@helpdesk.example>\nSent: Monday, January 5, 2026 10:00\n"
        "To: Jane Doe <jane@example.com>\nSubject: Re: Printer on fire\n\n" + OLD,
        "Still broken.",
    ),
    (
        "outlook-fr",
        "plain",
        "Merci beaucoup.\n\n________________________________\n"
        "De : Support <support@helpdesk.example>\nEnvoyé : lundi 5 janvier 2026 10:00\n"
        "À : Jane Doe <jane@example.com>\nObjet : Re: Imprimante en feu\n\n" + OLD,
        "Merci beaucoup.",
    ),
    (
        "outlook-nl",
        "plain",
        "Dank u wel.\n\nVan: Support <support@helpdesk.example>\n"
        "Verzonden: maandag 5 januari 2026 10:00\nAan: Jane Doe <jane@example.com>\n"
        "Onderwerp: RE: Printer\n\n" + OLD,
        "Dank u wel.",
    ),
    (
        "outlook-de",
        "plain",
        "Vielen Dank.\n\nVon: Support <support@helpdesk.example>\n"
        "Gesendet: Montag, 5. Januar 2026 10:00\nAn: Jane Doe <jane@example.com>\n"
        "Betreff: AW: Drucker\n\n" + OLD,
        "Vielen Dank.",
    ),
    (
        "outlook-de-original-message",
        "plain",
        "Geht wieder.\n\n-----Ursprüngliche Nachricht-----\nVon: Support\n" + OLD,
        "Geht wieder.",
    ),
    # -- Apple Mail ---------------------------------------------------------------------
    (
        "apple-en",
        "plain",
        "Works now.\n\n> On 5 Jan 2026, at 10:00, Support <support@helpdesk.example> wrote:\n"
        ">\n" + Q,
        "Works now.",
    ),
    (
        "apple-en-unquoted-attribution",
        "plain",
        "Works now.\n\nOn 5 Jan 2026, at 10:00, Support <support@helpdesk.example> wrote:\n\n" + Q,
        "Works now.",
    ),
    (
        "apple-fr",
        "plain",
        "C'est réglé.\n\nLe 5 janv. 2026 à 10:00, Support <support@helpdesk.example> a écrit :\n"
        "\n" + QFR,
        "C'est réglé.",
    ),
    (
        "apple-nl",
        "plain",
        "Opgelost.\n\nOp 5 jan. 2026 om 10:00 heeft Support <support@helpdesk.example> het "
        "volgende geschreven:\n\n" + QNL,
        "Opgelost.",
    ),
    (
        "apple-de",
        "plain",
        "Erledigt.\n\nAm 05.01.2026 um 10:00 schrieb Support <support@helpdesk.example>:\n\n" + QDE,
        "Erledigt.",
    ),
    # -- Thunderbird ------------------------------------------------------------------
    (
        "thunderbird-en",
        "plain",
        "Fine now.\n\nOn 05/01/2026 10:00, Support wrote:\n" + Q,
        "Fine now.",
    ),
    (
        "thunderbird-fr",
        "plain",
        "Tout va bien.\n\nLe 05/01/2026 à 10:00, Support a écrit :\n" + QFR,
        "Tout va bien.",
    ),
    (
        "thunderbird-nl",
        "plain",
        "Alles goed.\n\nOp 05-01-2026 om 10:00 schreef Support:\n" + QNL,
        "Alles goed.",
    ),
    (
        "thunderbird-de",
        "plain",
        "Alles gut.\n\nAm 05.01.26 um 10:00 schrieb Support:\n" + QDE,
        "Alles gut.",
    ),
    (
        "thunderbird-bottom-post",
        "plain",
        (
            "On 05/01/2026 10:00, Support wrote:\n> Did you restart it?\n\nYes, twice.\n\n"
            "> And the cable?\n\nAlso checked.\n-- \nJane Doe\nACME\n"
        ),
        "Yes, twice.\n\nAlso checked.",
    ),
    # -- mobile -------------------------------------------------------------------------
    (
        "iphone-en",
        "plain",
        "Yes please.\n\nSent from my iPhone\n\n> On 5 Jan 2026, at 10:00, Support "
        "<support@helpdesk.example> wrote:\n>\n" + Q,
        "Yes please.",
    ),
    ("iphone-fr", "plain", "Oui merci.\n\nEnvoyé de mon iPhone\n\n" + QFR, "Oui merci."),
    ("iphone-nl", "plain", "Ja graag.\n\nVerzonden vanaf mijn iPhone\n", "Ja graag."),
    ("iphone-de", "plain", "Ja, bitte.\n\nVon meinem iPhone gesendet\n", "Ja, bitte."),
    (
        "outlook-android",
        "plain",
        "Ok, thanks.\n\nGet Outlook for Android<https://aka.ms/AAb9ysg>\n\n"
        "From: Support <support@helpdesk.example>\nSent: Monday, January 5, 2026 10:00:00 AM\n"
        "To: Jane <jane@example.com>\nSubject: Re: Printer\n\n" + OLD,
        "Ok, thanks.",
    ),
    # -- signatures, first messages, all-quote ---------------------------------------------
    (
        "first-message-signature",
        "plain",
        "Hello,\n\nMy printer is on fire.\n\nRegards,\nJane\n-- \nJane Doe\nACME Corp\n+32 2 123",
        "Hello,\n\nMy printer is on fire.\n\nRegards,\nJane",
    ),
    (
        "first-message-plain",
        "plain",
        "Hello,\n\nOn Monday my printer caught fire. What now?\n",
        "Hello,\n\nOn Monday my printer caught fire. What now?",
    ),
    ("all-quote", "plain", Q, ""),
    ("all-quote-with-attribution", "plain", "On 05/01/2026 10:00, Support wrote:\n" + Q, ""),
    (
        "signature-stripped-space",
        "plain",
        "Please call me.\n--\nJane\n",
        "Please call me.",
    ),
]

GMAIL_HTML = (
    '<div dir="ltr">{new}</div><br><div class="gmail_quote"><div dir="ltr" '
    'class="gmail_attr">{attr}<br></div><blockquote class="gmail_quote" '
    'style="margin:0px 0px 0px 0.8ex;border-left:1px solid rgb(204,204,204);'
    "padding-left:1ex\">Bonjour Jane,<br>Redémarrez l'imprimante.</blockquote></div>"
)
OUTLOOK_HTML = (
    "<html><head><style>p.MsoNormal{{margin:0cm}}</style></head><body lang=EN-US>"
    "<div class=WordSection1><p class=MsoNormal>{new}<o:p></o:p></p>"
    "<p class=MsoNormal><o:p>&nbsp;</o:p></p><div><div style='border:none;border-top:solid "
    "#E1E1E1 1.0pt;padding:3.0pt 0cm 0cm 0cm'><p class=MsoNormal><b>{f}:</b> Support "
    "&lt;support@helpdesk.example&gt;<br><b>{s}:</b> 5 1 2026 10:00<br><b>{t}:</b> Jane "
    "&lt;jane@example.com&gt;<br><b>{su}:</b> RE: Printer<o:p></o:p></p></div></div>"
    "<p class=MsoNormal>Hello Jane, restart it.</p></div></body></html>"
)
OWA_HTML = (
    '<div>{new}</div><hr style="display:inline-block;width:98%" tabindex="-1">'
    '<div id="divRplyFwdMsg" dir="ltr"><font face="Calibri, sans-serif" color="#000000">'
    "<b>Van:</b> Support &lt;support@helpdesk.example&gt;<br><b>Verzonden:</b> maandag 5 "
    "januari 2026 10:00<br><b>Aan:</b> Jane<br><b>Onderwerp:</b> Re: Printer</font>"
    "<div>&nbsp;</div></div><div>Hallo Jane, herstart de printer.</div>"
)
APPLE_HTML = (
    '<html><body><div>{new}</div><div><br><blockquote type="cite"><div>{attr}</div><br>'
    "<div>Hallo Jane</div></blockquote></div></body></html>"
)
THUNDERBIRD_HTML = (
    '<html><body><p>{new}</p><div class="moz-cite-prefix">{attr}<br></div>'
    '<blockquote type="cite" cite="mid:m1@helpdesk.example">Hello Jane</blockquote>'
    "</body></html>"
)

HTML_CASES: list[tuple[str, str, str, str]] = [
    (
        "gmail-html-fr",
        "html",
        GMAIL_HTML.format(
            new="Merci, ça marche.",
            attr='Le lun. 5 janv. 2026 à 10:00, Support &lt;<a href="mailto:support@helpdesk.'
            'example">support@helpdesk.example</a>&gt; a écrit :',
        ),
        "Merci, ça marche.",
    ),
    (
        "gmail-html-en",
        "html",
        GMAIL_HTML.format(
            new="Thanks, <b>it works</b> now.",
            attr="On Mon, 5 Jan 2026 at 10:00, Support &lt;support@helpdesk.example&gt; wrote:",
        ),
        "Thanks, it works now.",
    ),
    (
        "outlook-html-en",
        "html",
        OUTLOOK_HTML.format(new="Still broken, sorry.", f="From", s="Sent", t="To", su="Subject"),
        "Still broken, sorry.",
    ),
    (
        "outlook-html-de",
        "html",
        OUTLOOK_HTML.format(new="Immer noch kaputt.", f="Von", s="Gesendet", t="An", su="Betreff"),
        "Immer noch kaputt.",
    ),
    ("owa-html-nl", "html", OWA_HTML.format(new="Bedankt!"), "Bedankt!"),
    (
        "apple-html-de",
        "html",
        APPLE_HTML.format(
            new="Ja, danke.",
            attr="Am 05.01.2026 um 10:00 schrieb Support &lt;support@helpdesk.example&gt;:",
        ),
        "Ja, danke.",
    ),
    (
        "thunderbird-html-en",
        "html",
        THUNDERBIRD_HTML.format(new="Fine now.", attr="On 05/01/2026 10:00, Support wrote:"),
        "Fine now.",
    ),
    (
        "html-first-message",
        "html",
        (
            "<html><head><script>var x=1;</script></head><body><p>Hello,</p><p>My printer is on "
            "fire.</p><p>-- <br>Jane Doe</p></body></html>"
        ),
        "Hello,\n\nMy printer is on fire.",
    ),
]

CASES = PLAIN_CASES + HTML_CASES
