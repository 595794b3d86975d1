"""What every command shares: the `main` group, the `Ctx` it passes down, the output helpers.

Errors a user can fix become one clear line (`click.ClickException`), never a
traceback.  `--json` output is for scripts and is a contract (the README: Command line).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import click

from .. import __version__
from ..app import App, load_config, open_app
from ..config import DEFAULT_PATH
from ..errors import MailticketError, RulesError, StorageError
from ..ingest import EX_TEMPFAIL


class TryLater(click.ClickException):
    """The database could not be reached: exit 75 so that an MTA or a script retries."""

    exit_code = EX_TEMPFAIL


class Ctx:
    def __init__(self, config_path: str | None, source: str = "") -> None:
        self.config_path = config_path
        self.source = source  # where the path came from: "--config", "$MAILTICKET_CONFIG", ""
        self._app: App | None = None

    @property
    def config(self):
        path = self.config_path or DEFAULT_PATH
        if not Path(path).is_file():
            where = (
                f"{path} (from {self.source})"
                if self.source
                else (f"./{DEFAULT_PATH} (no --config given and $MAILTICKET_CONFIG is not set)")
            )
            raise click.ClickException(
                f"no configuration file: looked for {where}.\n"
                f"Run `mailticket init DIR` to create a helpdesk, or name its file with "
                f"`mailticket --config FILE ...`."
            )
        try:
            return load_config(path)
        except MailticketError as exc:
            raise click.ClickException(str(exc)) from None

    def app(self, processing: bool = True) -> App:
        """The opened helpdesk; `processing=False` for commands that only read or deliver."""
        if self._app is None or (processing and self._app.pipeline is None):
            if self._app is not None:
                self._app.close()
            try:
                self._app = open_app(self.config, processing=processing)
            except RulesError as exc:
                raise click.ClickException(
                    f"the rules are broken; fix them (see `mailticket rules check`):\n{exc}"
                ) from None
            except StorageError as exc:
                raise TryLater(f"{exc}; try again later") from None
            except MailticketError as exc:
                raise click.ClickException(str(exc)) from None
        return self._app

    def close(self) -> None:
        if self._app is not None:
            self._app.close()
            self._app = None


json_option = click.option("--json", "as_json", is_flag=True, help="Output JSON for scripts.")


def at_time(value: str | None, now: datetime) -> datetime:
    """An `--at ISO-TIME` option's value (no zone: UTC), or `now` when not given."""
    if not value:
        return now
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"not an ISO time: {value!r} (e.g. 2026-12-21T10:00+01:00)") from None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def emit_json(data) -> None:
    click.echo(json.dumps(data, ensure_ascii=False, indent=None, default=str))


def table(rows: list[list], headers: list[str]) -> None:
    """A plain aligned table."""
    if not rows:
        click.echo("(none)")
        return
    cells = [[str("" if c is None else c) for c in row] for row in [headers, *rows]]
    widths = [min(max(len(r[i]) for r in cells), 60) for i in range(len(headers))]
    for n, row in enumerate(cells):
        click.echo("  ".join(c[:60].ljust(w) for c, w in zip(row, widths)).rstrip())
        if n == 0:
            click.echo("  ".join("-" * w for w in widths))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    envvar="MAILTICKET_CONFIG",
    help="Configuration file (default: ./mailticket.toml, or $MAILTICKET_CONFIG).",
)
@click.version_option(__version__, prog_name="mailticket")
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """mailticket: a helpdesk that lives in email.

    Every email becomes a ticket, threaded by its [#N] token or its References,
    routed by the YAML rules and acknowledged from a template.
    """
    source = {
        click.core.ParameterSource.COMMANDLINE: "--config",
        click.core.ParameterSource.ENVIRONMENT: "$MAILTICKET_CONFIG",
    }.get(ctx.get_parameter_source("config_path"), "")  # type: ignore[arg-type]
    ctx.obj = Ctx(config_path, source)
    ctx.call_on_close(ctx.obj.close)
