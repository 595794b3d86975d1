"""Assemble raw test messages as bytes, by hand, so that broken ones are as easy as good ones.

The email package's own builders refuse to produce most of the malformed mail that
real clients send; these helpers write exactly the bytes they are given.
"""

from __future__ import annotations

import base64

CRLF = b"\r\n"

DEFAULT_HEADERS = {
    "From": "Jane Doe <jane@example.com>",
    "To": "Support <support@helpdesk.example>",
    "Subject": "Printer on fire",
    "Date": "Mon, 05 Jan 2026 10:00:00 +0100",
    "Message-ID": "<m1@example.com>",
}


def _b(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")


def headers_block(headers: dict[str, str | bytes] | list[tuple[str, str | bytes]]) -> bytes:
    """Header lines; a value of None drops a default header."""
    items = headers.items() if isinstance(headers, dict) else headers
    return b"".join(_b(k) + b": " + _b(v) + CRLF for k, v in items if v is not None)


def top(overrides: dict[str, str | bytes | None] | None = None) -> dict[str, str | bytes]:
    """The default top-level headers with `overrides` applied (None removes one)."""
    merged: dict = dict(DEFAULT_HEADERS)
    merged.update(overrides or {})
    return {k: v for k, v in merged.items() if v is not None}


def leaf(
    content_type: str,
    body: str | bytes,
    *,
    cte: str = "8bit",
    extra: dict[str, str] | None = None,
) -> bytes:
    """One MIME part (headers + body), body encoded with `cte` (base64, 8bit, 7bit)."""
    data = _b(body)
    if cte == "base64":
        encoded = base64.encodebytes(data).replace(b"\n", CRLF)
    else:
        encoded = data.replace(b"\r\n", b"\n").replace(b"\n", CRLF)
    hdrs = {"Content-Type": content_type, "Content-Transfer-Encoding": cte, **(extra or {})}
    return headers_block(hdrs) + CRLF + encoded


def multipart(subtype: str, parts: list[bytes], boundary: str = "", params: str = "") -> bytes:
    """A multipart part (Content-Type header + body) enclosing `parts`."""
    boundary = boundary or f"b-{subtype}-{len(parts)}-{sum(map(len, parts))}"
    b = boundary.encode()
    body = b"".join(b"--" + b + CRLF + p + CRLF for p in parts) + b"--" + b + b"--" + CRLF
    head = f'Content-Type: multipart/{subtype}; boundary="{boundary}"{params}'.encode()
    return head + CRLF + CRLF + body


def message(
    body_part: bytes | None = None,
    headers: dict[str, str | bytes | None] | None = None,
    *,
    text: str | bytes | None = None,
) -> bytes:
    """A whole message: top-level headers, then either a plain text body or a MIME part.

    `body_part` is the output of `leaf` or `multipart`: its own headers are merged into
    the top-level block (as a real message is written).
    """
    hdrs = headers_block(top(headers))
    if body_part is None:
        body = _b(text or "").replace(b"\r\n", b"\n").replace(b"\n", CRLF)
        ctype = b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
        return b"MIME-Version: 1.0\r\n" + hdrs + ctype + CRLF + body
    return b"MIME-Version: 1.0\r\n" + hdrs + body_part


def plain(text: str, headers: dict[str, str | bytes | None] | None = None) -> bytes:
    return message(headers=headers, text=text)


def html_only(html: str, headers: dict[str, str | bytes | None] | None = None) -> bytes:
    return message(leaf("text/html; charset=utf-8", html), headers)


def alternative(
    text: str, html: str, headers: dict[str, str | bytes | None] | None = None
) -> bytes:
    return message(
        multipart(
            "alternative",
            [leaf("text/plain; charset=utf-8", text), leaf("text/html; charset=utf-8", html)],
        ),
        headers,
    )


def attachment(filename: str, payload: bytes, content_type: str = "application/pdf") -> bytes:
    return leaf(
        f'{content_type}; name="{filename}"',
        payload,
        cte="base64",
        extra={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


def inline_image(cid: str, payload: bytes, filename: str = "image001.png") -> bytes:
    return leaf(
        f'image/png; name="{filename}"',
        payload,
        cte="base64",
        extra={
            "Content-Disposition": f'inline; filename="{filename}"',
            "Content-ID": f"<{cid}>",
        },
    )
