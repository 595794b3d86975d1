"""Attributions in any language, found by their shape, and lines that only look like them.

Each case: (id, body, expected new text).  The attributions are written as Gmail, Apple
Mail (macOS, iOS), Outlook mobile and Thunderbird write them in Spanish, Italian,
Portuguese, Polish, Swedish, Russian, Japanese and Chinese; Gmail wraps a long one
before the address.
"""

from __future__ import annotations

import time

import pytest

from mailticket.parsers import quotes
from mailticket.parsers.message import parse

from . import mailbuild as mb

Q = "> Hello Jane,\n> Please restart the printer.\n>\n> Support\n"
OLD = "Hello Jane,\nPlease restart the printer.\n"

ATTRIBUTIONS: list[tuple[str, str, str]] = [
    # -- Spanish ----------------------------------------------------------------------
    (
        "gmail-es",
        "Gracias, ya funciona.\n\nEl lun, 23 nov 2026 a las 14:05, Soporte "
        "(<support@helpdesk.example>) escribió:\n\n" + Q,
        "Gracias, ya funciona.",
    ),
    (
        "gmail-es-wrapped",
        "Gracias.\n\nEl lun, 23 nov 2026 a las 14:05, Servicio de atención al cliente de ACME (<\n"
        "support@helpdesk.example>) escribió:\n\n" + Q,
        "Gracias.",
    ),
    (
        "gmail-es-wrapped-right-below-the-text",
        "Gracias.\nEl lun, 23 nov 2026 a las 14:05, Servicio de atención al cliente de ACME (<\n"
        "support@helpdesk.example>) escribió:\n\n" + Q,
        "Gracias.",
    ),
    (
        "apple-es-iphone",
        "Sí, por favor.\n\nEnviado desde mi iPhone\n\n> El 23 nov 2026, a las 14:05, Soporte "
        "<support@helpdesk.example> escribió:\n>\n" + Q,
        "Sí, por favor.",
    ),
    (
        "thunderbird-es",
        "Todo bien.\n\nEl 23/11/26 a las 14:05, Soporte escribió:\n" + Q,
        "Todo bien.",
    ),
    # -- Italian ----------------------------------------------------------------------
    (
        "gmail-it",
        "Grazie, funziona.\n\nIl giorno lun 23 nov 2026 alle ore 14:05 Assistenza "
        "<support@helpdesk.example> ha scritto:\n\n" + Q,
        "Grazie, funziona.",
    ),
    (
        "apple-it",
        "Risolto.\n\nIl giorno 23 nov 2026, alle ore 14:05, Assistenza "
        "<support@helpdesk.example> ha scritto:\n\n" + Q,
        "Risolto.",
    ),
    (
        "thunderbird-it",
        "Tutto bene.\n\nIl 23/11/2026 14:05, Assistenza ha scritto:\n" + Q,
        "Tutto bene.",
    ),
    # -- Portuguese -------------------------------------------------------------------
    (
        "gmail-pt",
        "Obrigado, funcionou.\n\nEm seg., 23 de nov. de 2026 às 14:05, Suporte "
        "<support@helpdesk.example> escreveu:\n\n" + Q,
        "Obrigado, funcionou.",
    ),
    (
        "apple-pt",
        "Resolvido.\n\nEm 23 de nov. de 2026, à(s) 14:05, Suporte <support@helpdesk.example> "
        "escreveu:\n\n" + Q,
        "Resolvido.",
    ),
    (
        "thunderbird-pt",
        "Tudo certo.\n\nEm 23/11/2026 14:05, Suporte escreveu:\n" + Q,
        "Tudo certo.",
    ),
    # -- Polish -----------------------------------------------------------------------
    (
        "gmail-pl",
        "Dziękuję, działa.\n\npon., 23 lis 2026 o 14:05 Wsparcie <support@helpdesk.example> "
        "napisał(a):\n\n" + Q,
        "Dziękuję, działa.",
    ),
    (
        "apple-pl",
        "Załatwione.\n\nWiadomość napisana przez Wsparcie <support@helpdesk.example> w dniu "
        "23.11.2026, o godz. 14:05:\n\n" + Q,
        "Załatwione.",
    ),
    (
        "thunderbird-pl",
        "Wszystko w porządku.\n\nW dniu 23.11.2026 o 14:05, Anna Nowak napisała:\n" + Q,
        "Wszystko w porządku.",
    ),
    # -- Swedish ----------------------------------------------------------------------
    (
        "gmail-sv",
        "Tack, det fungerar.\n\nDen mån 23 nov. 2026 kl 14:05 skrev Support "
        "<support@helpdesk.example>:\n\n" + Q,
        "Tack, det fungerar.",
    ),
    (
        "apple-sv",
        "Löst.\n\n23 nov. 2026 kl. 14:05 skrev Support <support@helpdesk.example>:\n\n" + Q,
        "Löst.",
    ),
    (
        "thunderbird-sv",
        "Allt bra.\n\nDen 2026-11-23 kl. 14:05, skrev Support:\n" + Q,
        "Allt bra.",
    ),
    # -- Russian ----------------------------------------------------------------------
    (
        "gmail-ru-no-verb",
        "Спасибо, работает.\n\nпн, 23 нояб. 2026 г., 14:05 Иван Петров <ivan@example.ru>:\n\n" + Q,
        "Спасибо, работает.",
    ),
    (
        "gmail-ru-wrapped",
        "Спасибо.\n\nпн, 23 нояб. 2026 г. в 14:05, Служба поддержки компании ACME Corporation <\n"
        "support@helpdesk.example>:\n\n" + Q,
        "Спасибо.",
    ),
    (
        "gmail-ru-wrapped-three-lines",
        "Спасибо.\n\nпн, 23 нояб. 2026 г. в 14:05, Служба технической поддержки клиентов\n"
        "компании ACME Corporation International Holdings Limited Partnership <\n"
        "support@helpdesk.example>:\n\n" + Q,
        "Спасибо.",
    ),
    (
        "yandex-ru",
        'Понял, спасибо.\n\n23.11.2026, 14:05, "Иван" <ivan@example.ru> пишет:\n' + Q,
        "Понял, спасибо.",
    ),
    (
        "apple-ru",
        "Готово.\n\n23 нояб. 2026 г., в 14:05, Иван Петров <ivan@example.ru> написал(а):\n\n" + Q,
        "Готово.",
    ),
    (
        "thunderbird-ru-no-address",
        "Всё в порядке.\n\n23.11.2026 14:05, Иван Петров пишет:\n" + Q,
        "Всё в порядке.",
    ),
    # -- Japanese ---------------------------------------------------------------------
    (
        "gmail-ja-no-verb",
        "ありがとうございます。\n\n2026年11月23日(月) 14:05 Taro <taro@example.jp>:\n\n" + Q,
        "ありがとうございます。",
    ),
    (
        "apple-ja",
        "了解です。\n\n2026/11/23 14:05、山田太郎 <taro@example.jp>のメール:\n\n" + Q,
        "了解です。",
    ),
    (
        "thunderbird-ja",
        "解決しました。\n\n2026/11/23 14:05, 山田太郎 さんは書きました:\n" + Q,
        "解決しました。",
    ),
    (
        "outlook-ja-message",
        "確認しました。\n\n2026/11/23 14:05 山田太郎 <taro@example.jp> のメッセージ:\n\n" + Q,
        "確認しました。",
    ),
    # -- Chinese ----------------------------------------------------------------------
    (
        "gmail-zh-cn",
        "谢谢，已经好了。\n\n张伟 <zhang@example.cn> 于2026年11月23日周一 14:05写道：\n\n" + Q,
        "谢谢，已经好了。",
    ),
    (
        "gmail-zh-tw",
        "謝謝。\n\n張偉 <zhang@example.tw> 於 2026年11月23日 週一 下午2:05寫道：\n\n" + Q,
        "謝謝。",
    ),
    (
        "apple-zh",
        "好的。\n\n2026年11月23日 14:05，张伟 <zhang@example.cn> 写道：\n\n" + Q,
        "好的。",
    ),
    (
        "thunderbird-zh",
        "没问题了。\n\n在 2026/11/23 14:05, 张伟 写道:\n" + Q,
        "没问题了。",
    ),
    # -- Outlook mobile: localized header block, stamp above it ------------------------
    (
        "outlook-android-es",
        "Vale, gracias.\n\nObtener Outlook para Android\n\nDe: Soporte <support@helpdesk.example>\n"
        "Enviado: lunes, 23 de noviembre de 2026 14:05\nPara: Jane <jane@example.com>\n"
        "Asunto: Re: Impresora\n\n" + OLD,
        "Vale, gracias.",
    ),
    (
        "outlook-ios-ru",
        "Хорошо.\n\nОт: Поддержка <support@helpdesk.example>\n"
        "Отправлено: понедельник, 23 ноября 2026 г. 14:05\nКому: Jane <jane@example.com>\n"
        "Тема: Re: Принтер\n\n" + OLD,
        "Хорошо.",
    ),
    (
        "outlook-ios-ja",
        "了解。\n\n差出人: サポート <support@helpdesk.example>\n送信日時: 2026年11月23日 14:05\n"
        "宛先: Jane <jane@example.com>\n件名: Re: プリンター\n\n" + OLD,
        "了解。",
    ),
    (
        "outlook-it-original-message",
        "Va bene.\n\n-----Messaggio originale-----\nDa: Assistenza\n" + OLD,
        "Va bene.",
    ),
    # -- shape alone: above an original rather than a `>` quote --------------------------
    (
        "date-and-address-above-header-block",
        "Ok.\n\n23.11.2026 14:05, Поддержка <support@helpdesk.example>:\n\n"
        "From: Support <support@helpdesk.example>\nSent: Monday, November 23, 2026 14:05\n"
        "To: Jane <jane@example.com>\nSubject: Re: Printer\n\n" + OLD,
        "Ok.",
    ),
    (
        "sure-attribution-without-quote",
        "Gracias.\n\nEl 23/11/26 a las 14:05, Soporte escribió:\n\n" + OLD,
        "Gracias.",
    ),
    (
        "bottom-post-ru",
        "пн, 23 нояб. 2026 г., 14:05 Иван <ivan@example.ru>:\n> Перезагрузили?\n\nДа, дважды.\n",
        "Да, дважды.",
    ),
]

# Lines that only look like attributions: they stay new text, and above a real quote
# (here Gmail's Russian attribution, which has no verb) only that quote goes.
LOOKALIKES: list[tuple[str, str]] = [
    ("on-prose", "On Monday the printer broke:\nit shows error 49 since then.\nPlease help."),
    ("colon-then-list", "My details are:\n- Jane Doe\n- +32 2 123 45 67\n- jane@example.com"),
    ("date-colon-then-list", "Meeting on 23.11.2026 at 14:05:\n- printer\n- budget"),
    ("address-colon-then-text", "Escribí a support@example.com:\nno contestan."),
    ("ru-date-colon-then-text", "23.11.2026 в 14:05 случилось следующее:\nпринтер сгорел."),
    ("verb-in-a-word", "In 2026 the vendor rewrote:\nthe driver, and now it works."),
]
RU_GMAIL = "пн, 23 нояб. 2026 г., 14:05 Иван Петров <ivan@example.ru>:\n"


@pytest.mark.parametrize(
    ("body", "expected"), [c[1:] for c in ATTRIBUTIONS], ids=[c[0] for c in ATTRIBUTIONS]
)
def test_attribution_is_cut(body: str, expected: str) -> None:
    assert quotes.new_text(body) == expected
    assert quotes.new_text(body.replace("\n", "\r\n")) == expected


@pytest.mark.parametrize(("body",), [c[1:] for c in LOOKALIKES], ids=[c[0] for c in LOOKALIKES])
def test_lookalike_stays_new_text(body: str) -> None:
    assert quotes.new_text(body) == body
    assert quotes.new_text(f"{body}\n\n{RU_GMAIL}\n{Q}") == body


def test_sentence_right_above_an_attribution_stays() -> None:
    # No blank line between: the sentence starts like an attribution ("On ...") and is
    # long enough to be a wrapped one, but the attribution below is whole on its own.
    body = (
        "On Monday it broke again, sorry for that.\n"
        "On Mon, 23 Nov 2026 at 14:05, Support <support@helpdesk.example> wrote:\n" + Q
    )
    assert quotes.new_text(body) == "On Monday it broke again, sorry for that."


def test_russian_gmail_reply_through_parse() -> None:
    body = "Спасибо, работает.\n\nпн, 23 нояб. 2026 г., 14:05 Иван Петров <ivan@example.ru>:\n\n" + Q
    pm = parse(mb.plain(body))
    assert pm.new_text == "Спасибо, работает."
    assert "ivan@example.ru" in pm.text  # the full text keeps the history


def test_many_attribution_shapes_are_bounded() -> None:
    # The worst case of the shape test: paragraphs of long lines, each ending with a
    # wrapped attribution, and none above a quote but the last.
    name = ("Иван Петров " * 25).rstrip()
    para = f"\nпн, 23 нояб. 2026 г., 14:05 {name}\n{name}\n<ivan@example.ru>:\n"
    start = time.monotonic()
    new = quotes.new_text(para * 1200 + Q)
    assert time.monotonic() - start < 2
    assert new == (para * 1199).strip("\n")
