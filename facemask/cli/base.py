"""The `facemask` group and what every command shares: exit codes, --json, former option names,
the stop line, the results footer, options whose defaults are the config dataclasses'.

Every option's default comes from the stage's config dataclass in `facemask.core.settings`.
A stage module is imported inside its command: the stages pull in numpy, Pillow, Ray and
Ultralytics, and `facemask --help` must stay fast (under 150 ms). A `FacemaskError` (a
mistake the user can fix) prints one line and exits 2; anything else is a bug and says so.
Every command that produces a result prints it as one JSON object with `--json` (docs/cli.md
documents each shape and the exit codes).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from pathlib import Path

import click

from facemask import __version__
from facemask.core.errors import FacemaskError, RayStartFailed, StudyInterrupted
from facemask.core.lifecycle import (
    at_forced_stop,
    handle_stop_signals,
    stop_exit_code,
    stop_signal,
    stopped_meanwhile,
)
from facemask.core.settings import (
    default,
)

DEBUG_ENV = "FACEMASK_DEBUG"
# Exit codes (docs/cli.md): 0 done; 1 a failure that is not the input's (a bug, an endpoint's own
# error or no endpoint at all); 2 a mistake the user can fix; 3 with --exit-code, a negative
# answer (promote kept the champion, compare found no difference); 130/143 stopped by a signal.
EXIT_FAILURE, EXIT_USAGE, EXIT_NEGATIVE = 1, 2, 3


def _debug() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def _fail(message: str, code: int = EXIT_USAGE) -> None:
    """One line on stderr and exit `code` (2: the user's mistake, with its fix in `message`)."""
    if _debug():
        traceback.print_exc()
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


class ServerFailure(FacemaskError):
    """An endpoint failed, or none answered: not the user's input, so it exits 1, not 2."""


# Where a --json result goes: the real stdout, while everything else printed meanwhile
# (Ultralytics writes progress and notices to stdout) goes to stderr.
_results_out: list = []


def JSON_OPTION(fn):
    """--json: the command's result as one JSON object, and nothing else, on stdout (shapes: docs/cli.md)."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kw):
        if not kw["as_json"]:
            return fn(*args, **kw)
        _results_out.append(sys.stdout)
        # Not put back afterwards: what prints after the result (Ray's log monitor relaying a
        # worker's last lines, exit handlers) must not follow the JSON on stdout.
        sys.stdout = sys.stderr
        try:
            return fn(*args, **kw)
        finally:
            _results_out.pop()

    help_text = "Print the result as one JSON object on stdout, and nothing else there (shapes: docs/cli.md)."
    return click.option("--json", "as_json", is_flag=True, help=help_text)(wrapper)


EXIT_CODE_OPTION = click.option(
    "--exit-code", is_flag=True, help=f"Exit {EXIT_NEGATIVE} on a negative answer instead of 0 (docs/cli.md)."
)


def emit(as_json: bool, payload: dict, text: str | None = None) -> None:
    """The command's result on stdout: `payload` as JSON, or `text` for a reader."""
    if as_json:
        click.echo(json.dumps(payload, indent=2, default=str), file=_results_out[-1] if _results_out else None)
    elif text is not None:
        click.echo(text)


def hidden_alias(old: str, param: str):
    """Keep an option's former name working for a release: hidden from --help, it sets `param`
    and says once on stderr that the name changed."""

    def decorate(fn):
        import functools

        hidden = f"_former_{param}"

        @functools.wraps(fn)
        def wrapper(*args, **kw):
            value = kw.pop(hidden)
            if value is not None:
                ctx = click.get_current_context()
                target = next(p for p in ctx.command.params if p.name == param)
                click.echo(f"note: {old} is now {target.opts[0]}; {old} goes away in the next release", err=True)
                kw[param] = target.type_cast_value(ctx, value)
            return fn(*args, **kw)

        return click.option(old, hidden, hidden=True, default=None)(wrapper)

    return decorate


# What a stopped command leaves behind, in the one line it prints (tune says it in StudyInterrupted).
STOP_HINTS = {
    "data": "nothing was kept that a rerun needs: run the same command again",
    "train": "its MLflow run is marked KILLED; run the same command again to train anew",
    "predict": "the files written so far are in --out; run the same command again to redo the rest",
    "serve": "the endpoint and its replicas are down; run the same command to serve again",
    "evaluate": "nothing was logged; run the same command again",
    "watch": "each camera's window so far is in compliance.jsonl (partial: true); run the same command to go on",
}


def _stopped(ctx: click.Context, detail: str | None = None) -> None:
    """One line saying what was stopped and how to go on, then exit 130 (Ctrl-C) or 143 (SIGTERM)."""
    import signal

    sig = signal.Signals(stop_signal() or signal.SIGINT).name
    click.echo(f"stopped by {sig}: {stop_summary(ctx.invoked_subcommand or 'command', detail)}", err=True)
    sys.exit(stop_exit_code())


def stop_summary(command: str, detail: str | None = None) -> str:
    """What was stopped and how to go on: `detail`, or the command's own hint."""
    return f"facemask {command}: {detail or STOP_HINTS.get(command, 'run the same command again')}"


class FacemaskGroup(click.Group):
    """The one place errors become exit codes: FacemaskError 2, Ctrl-C 130, SIGTERM 143, a bug 1."""

    def resolve_command(self, ctx: click.Context, args: list[str]):
        name, command, rest = super().resolve_command(ctx, args)
        # What a forced stop says, should one cut this command short (lifecycle.at_forced_stop).
        at_forced_stop(lambda: stop_summary(name))
        return name, command, rest

    def invoke(self, ctx: click.Context):
        handle_stop_signals()
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except StudyInterrupted as exc:
            _stopped(ctx, str(exc))
        except (ServerFailure, RayStartFailed) as exc:
            _fail(str(exc), EXIT_FAILURE)
        except FacemaskError as exc:
            _fail(str(exc))
        except KeyboardInterrupt as exc:
            _stopped(ctx, str(exc) or None)
        except Exception as exc:
            if stopped_meanwhile():  # the stop's own doing (a worker it ended), not a bug
                _stopped(ctx, None)
            if _debug():
                traceback.print_exc()
            else:
                click.echo(f"internal error: {type(exc).__name__}: {exc}", err=True)
                click.echo(
                    f"This is a bug in facemask, not in your input. Rerun with {DEBUG_ENV}=1 for the "
                    "traceback, and report it.",
                    err=True,
                )
            sys.exit(1)


def results_footer(
    tracking: str | None = None,
    experiment: str | None = None,
    run_id: str | None = None,
    model: str | None = None,
    paths: dict[str, Path | str] | None = None,
) -> str:
    """The closing lines of a command: where its results are, and the commands that open them.

    Under `ray job submit` these are the last lines of the job's log, so a user finds the
    results without knowing where Ray ran the job.
    """
    import shlex

    lines = ["results:"]
    if tracking:
        where = ", ".join(
            ([f"experiment {experiment!r}"] if experiment else []) + ([f"run {run_id}"] if run_id else [])
        )
        lines.append(f"  MLflow:     {tracking}" + (f"  ({where})" if where else ""))
    if model:
        lines.append(f"  model:      {model}")
    for name, path in (paths or {}).items():
        lines.append(f"  {name + ':':11s} {path}")
    if tracking:
        env = f"MLFLOW_TRACKING_URI={shlex.quote(tracking)}"
        if tracking.startswith(("http://", "https://")):
            lines.append(f"  open:       {tracking} in a browser (the MLflow UI)")
        else:
            lines.append(f"  open:       mlflow ui --backend-store-uri {shlex.quote(tracking)}")
        if model:
            lines.append(f"  serve:      {env} facemask serve --model-uri {model}")
    return "\n".join(lines)


def config_options(config: type, *specs: tuple) -> callable:
    """Click options whose defaults are `config`'s field defaults: (flag, field, kwargs) each.

    kwargs["param"] names the function's parameter when the field's name is taken by
    another config's option (both TrainConfig and DistributedConfig have `workers`).
    """

    def decorate(fn):
        for flag, name, kwargs in reversed(specs):
            kwargs = dict(kwargs)
            param = kwargs.pop("param", name)
            fn = click.option(flag, param, default=default(config, name), show_default=True, **kwargs)(fn)
        return fn

    return decorate


@click.group(cls=FacemaskGroup)
@click.version_option(__version__, "-V", "--version", prog_name="facemask")
@click.option("-v", "--verbose", is_flag=True, help="Log progress at INFO level.")
def main(verbose: bool) -> None:
    """Train, tune, track and serve a YOLO26 face-mask detector on Ray."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    # FACEMASK_DEBUG also shows what only a developer reads, such as Ray Data's per-stage stats.
    logging.getLogger("facemask").setLevel(logging.DEBUG if os.environ.get(DEBUG_ENV) else logging.INFO)
