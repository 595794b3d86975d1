"""mailticket: a helpdesk that lives in email.

Every message that reaches the helpdesk (SMTP/LMTP, IMAP, or `mailticket ingest`)
is first stored raw in the durable inbox (`inbox`), then run through the
pipeline (`pipeline`): parse, dedupe, guard, thread, route, record, notify,
committed as one transaction.  See docs/architecture.md for the whole map.
"""

__version__ = "0.1.0"
