"""The words that mark quoted history, per language: data for `quotes`.

Place in the flow: `quotes` builds its precompiled regexes from these tuples once, at
import.  Each entry is a regex fragment, unless its comment says otherwise.
To add a language, add its words to each tuple and a case to tests/parsers; nothing
else changes.  The forms come from the clients' own output: Gmail, Apple Mail (macOS,
iOS), Outlook (desktop, web, mobile), Thunderbird, mutt and Zimbra.
"""

from __future__ import annotations

# The verb of an attribution, last before its colon: "On ... Jane <j@x> wrote:".  Plain
# lowercase words, compared with the end of the line.
WROTE = (
    "wrote",
    "writes",
    "a écrit",  # French
    "a ecrit",
    "het volgende geschreven",  # Dutch, Apple Mail
    "escribió",  # Spanish
    "ha scritto",  # Italian
    "escreveu",  # Portuguese
    "napisał(a)",  # Polish, Gmail and mutt
    "napisał",  # Polish
    "napisała",
    "pisze",  # Polish, Thunderbird
    "написал(а)",  # Russian, Apple Mail
    "написал",  # Russian
    "написала",
    "пишет",  # Russian: Yandex, Mail.ru, Thunderbird
)
# The same in Chinese and Japanese, which need no space before them ("14:05写道：").
WROTE_CJK = (
    "写道",  # Chinese (simplified)
    "寫道",  # Chinese (traditional)
    "書きました",  # Japanese: "... さんは書きました:"
    "のメッセージ",  # Japanese: "... <taro@x> のメッセージ:"
    "のメール",  # Japanese, Apple Mail: "2026/11/23 14:05、Taro <taro@x>のメール:"
)
# Verbs that come before the sender's name: "Op ... schreef Jane <j@x>:" (regex fragments).
WROTE_BEFORE_NAME = (
    r"schreef",  # Dutch
    r"schrieb",  # German
    r"skrev",  # Swedish, Danish, Norwegian
)
# The first word of an attribution that starts with a word rather than a date.
LEAD = (
    r"On",
    r"Le",  # French
    r"Op",  # Dutch
    r"Am",  # German
    r"El",  # Spanish
    r"Il",  # Italian: "Il giorno ..." (Gmail, Apple Mail), "Il 23/11/2026 ..."
    r"Em",  # Portuguese
    r"Den",  # Swedish
    r"W\s+dniu",  # Polish, Thunderbird
    r"Dnia",  # Polish, mutt
    r"Wiadomość\s+napisana\s+przez",  # Polish, Apple Mail
    r"在",  # Chinese, Thunderbird
)

# "-----Original Message-----" and its translations.
ORIGINAL_MESSAGE = (
    r"Original Message",
    r"Message d'origine",
    r"Oorspronkelijk bericht",
    r"Ursprüngliche Nachricht",
    r"Originalnachricht",
    r"Mensaje original",
    r"Messaggio originale",
    r"Mensagem original",
    r"Oryginalna wiadomość",
    r"Ursprungligt meddelande",
    r"Исходное сообщение",
    r"元のメッセージ",
    r"原始邮件",
    r"原始郵件",
)

# Outlook's header block (desktop, web and mobile), by its first three labels.
HEADER_FROM = (
    r"From", r"De", r"Van", r"Von", r"Da", r"Od", r"Från", r"От", r"差出人", r"发件人",
    r"寄件者",
)  # fmt: skip
HEADER_SENT = (
    r"Sent", r"Date", r"Envoyé", r"Verzonden", r"Gesendet", r"Datum", r"Enviado",
    r"Inviato", r"Data", r"Wysłane", r"Wysłano", r"Skickat", r"Отправлено", r"Дата",
    r"送信日時", r"发送时间", r"寄件日期", r"日期",
)  # fmt: skip
HEADER_TO = (
    r"To", r"Cc", r"À", r"A", r"Aan", r"An", r"Para", r"Do", r"Till", r"Кому", r"宛先",
    r"收件人", r"收件者",
)  # fmt: skip
HEADER_SUBJECT = (
    r"Subject", r"Objet", r"Onderwerp", r"Betreff", r"Asunto", r"Oggetto", r"Assunto",
    r"Temat", r"Ämne", r"Тема", r"件名", r"主题", r"主旨",
)  # fmt: skip

# The rule above an inline forward, between dashes: Gmail "---------- Forwarded message
# ---------", Thunderbird "-------- Forwarded Message --------", in their translations.
FORWARDED = (
    r"Forwarded message",
    r"Message transféré",
    r"Doorgestuurd bericht",
    r"Weitergeleitete Nachricht",
)
# Apple Mail's line above a forward, without dashes and ending with a colon.
FORWARD_INTRO = (
    r"Begin forwarded message",
    r"Début du message réexpédié",
    r"Begin doorgestuurd bericht",
    r"Anfang der weitergeleiteten Nachricht",
)
# A forward's subject prefix, as Outlook writes it (Gmail, Apple Mail and Thunderbird
# write "Fwd:"): an Outlook header block is a forward, not a reply, only under one.
FORWARD_PREFIX = (r"Fwd?", r"TR", r"WG", r"Doorst", r"RV", r"ENC", r"I", r"VB", r"PD")

# A mobile client's stamp that ends the new text, from its start to "iPhone" or so.
# Each starts with a letter, not a regex sign (`quotes` looks ahead for first letters).
MOBILE = (
    r"Sent from my\b", r"Sent from (?:Mail|Outlook|Yahoo Mail)\b", r"Get Outlook for\b",
    r"Envoyé de mon\b", r"Envoyé depuis\b", r"Téléchargez Outlook pour\b",
    r"Verzonden (?:vanaf|met) mijn\b", r"Verstuurd (?:vanaf|met) mijn\b",
    r"Download Outlook voor\b",
    r"Von meinem\b.{0,40}\bgesendet", r"Gesendet von meinem\b",
    r"Outlook für\b.{0,20}\bbeziehen",
    r"Enviado desde mi\b", r"Obtener Outlook para\b",  # Spanish
    r"Inviato da iP(?:hone|ad)\b", r"Inviato dal mio\b", r"Scarica Outlook per\b",
    r"Enviado do meu\b", r"Obter o Outlook para\b",  # Portuguese
    r"Wysłane z (?:mojego\b|iP(?:hone|ada?)\b)", r"Pobierz aplikację Outlook\b",
    r"Skickat från min\b", r"Hämta Outlook för\b",  # Swedish
    r"Отправлено с (?:моего\s)?iP(?:hone|ad)\b", r"Скачайте Outlook для\b",
    r"iP(?:hone|ad)から送信",  # Japanese
    r"发自我的\s?iP(?:hone|ad)", r"從我的\s?iP(?:hone|ad)\s?傳送",  # Chinese
)  # fmt: skip
