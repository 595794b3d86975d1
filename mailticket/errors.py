"""One root exception for everything mailticket raises on purpose, and a few precise children.

Library code raises these; `cli` turns them into `click.ClickException` so a user
sees one clear line instead of a traceback.
"""


class MailticketError(Exception):
    """Root of every error mailticket raises on purpose."""


class ConfigError(MailticketError):
    """The configuration file is unreadable or has an unknown key, a wrong type or a bad value.

    The message always names the file and the key.
    """


class RulesError(MailticketError):
    """One or more rule files are invalid.  `problems` lists each with file, line and key."""

    def __init__(self, problems):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class StorageError(MailticketError):
    """The database could not store a message (down, locked, full): try again later."""


class TemplateError(MailticketError):
    """A mail template is missing or does not render."""


class TicketError(MailticketError):
    """A change a ticket cannot take: an unknown status, priority or attribute."""


class AgentError(MailticketError):
    """An agent cannot be added or changed: the helpdesk's own address, a tier outside 1..3,
    an unknown agent or one that exists already."""
