"""Root ``vault`` group, shared options, and the one error-to-exit-code table.

Exit codes: 0 ok; 1 a check found problems (:class:`IntegrityError`); 2 bad input or usage
(every other :class:`VaultError`, click usage errors, OS errors such as permissions); 3 a
protocol run by ``vault run`` failed (:class:`RunFailedError`, nothing committed); 70 an
internal error (a bug in cas-vault, ``EX_SOFTWARE`` of sysexits.h); 124 a query ran past its
``--timeout`` (:class:`QueryTimeoutError`, as GNU ``timeout``); 130 interrupted (Ctrl-C); 141 the
reader of standard output went away (``vault log | head -1``), as for any Unix tool killed by
SIGPIPE, without a message. Errors are printed as ``error: <what was wrong and what to do>``,
never as a traceback; set ``CAS_VAULT_DEBUG=1`` to see one.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from ..errors import VaultError
from ..units import human_bytes
from .text import escape

if TYPE_CHECKING:
    from ..repository import Repository

__all__ = ["cli", "echo_json", "human_bytes", "main", "open_vault", "vault_option"]

#: Modules that register commands on :data:`cli` when imported.
COMMAND_MODULES = (
    "core",
    "integrity",
    "runs",
    "engines",
    "catalog",
    "lifecycle",
    "taxonomy",
    "workdirs",
    "ui",
)

#: A bug in cas-vault (sysexits.h ``EX_SOFTWARE``): never 1, which means "a check found problems".
EXIT_INTERNAL = 70
#: Standard output was closed by its reader; shells report a tool killed by SIGPIPE as 128 + 13.
EXIT_BROKEN_PIPE = 141

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class VaultGroup(click.Group):
    """A click group that turns library errors into clean messages and exit codes."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except VaultError as exc:
            _fail(str(exc), exc.exit_code)
        except BrokenPipeError:
            # Before click's own handler, which would exit 1 ("a check found problems").
            _quiet_broken_pipe()
        except OSError as exc:
            where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
            _fail(f"{exc.strerror or exc}{where}; check the path, its permissions and free space", 2)
        except KeyboardInterrupt:
            from .interrupt import interrupt_message

            _fail(interrupt_message(ctx), 130)
        except Exception as exc:  # a bug: say so plainly, without a traceback
            if os.environ.get("CAS_VAULT_DEBUG"):
                raise
            _fail(
                f"internal error: {type(exc).__name__}: {exc}. This is a bug in cas-vault; "
                "rerun with CAS_VAULT_DEBUG=1 for the traceback and report it",
                EXIT_INTERNAL,
            )


def _fail(message: str, code: int) -> None:
    click.echo(f"error: {escape(message, keep_newlines=True)}", err=True)
    sys.exit(code)


@click.group(cls=VaultGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(package_name="cas-vault", prog_name="vault")
@click.option(
    "--vault", "vault_path", type=click.Path(file_okay=False), default=None, envvar=None,
    help="Vault directory (default: $CAS_VAULT_DIR, else the nearest vault above the current directory).",
)
@click.pass_context
def cli(ctx: click.Context, vault_path: str | None) -> None:
    """cas-vault: seal every experiment, deduplicate every byte, query everything in SQL.

    \b
    Start here:
      vault demo                       create ./demo-vault with an example specimen
      vault init PATH                  create an empty vault
      vault new ID --domain D --method M
      vault commit ID -m "message"
      vault log / vault show ID
    """
    ctx.ensure_object(dict)
    ctx.obj["vault_path"] = vault_path


def vault_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--vault PATH`` to a command; the value is merged with the group's."""

    @click.option("--vault", "vault_path", type=click.Path(file_okay=False), default=None,
                  help="Vault directory (overrides the group option and $CAS_VAULT_DIR).")
    @functools.wraps(f)
    def wrapper(*args: Any, vault_path: str | None = None, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        root = ctx.find_root()
        if vault_path is None and root.obj:
            vault_path = root.obj.get("vault_path")
        return f(*args, vault_path=vault_path, **kwargs)

    return wrapper


def open_vault(vault_path: str | None) -> Repository:
    """Open the vault named by ``--vault`` (or found from the environment / cwd)."""
    from ..repository import Repository

    return Repository.open(vault_path)


def echo_json(value: Any) -> None:
    """Print ``value`` as stable, sorted, indented JSON."""
    text = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=True)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # A file name that is not UTF-8 arrives as lone surrogates, which no UTF-8 output can
        # hold: escape them as JSON does (\udcff); json.loads and os.fsencode give the bytes back.
        text = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=True, allow_nan=True)
    click.echo(text)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``vault`` and ``cas-vault`` scripts."""
    try:
        try:
            cli.main(args=argv, prog_name="vault")
        finally:
            sys.stdout.flush()  # a closed pipe shows here for buffered output, not in click
    except BrokenPipeError:
        _quiet_broken_pipe()


def _quiet_broken_pipe() -> None:
    # Point stdout at /dev/null so the interpreter's own flush at exit cannot raise again
    # (the recipe in Python's signal module documentation), then leave as SIGPIPE would.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    sys.exit(EXIT_BROKEN_PIPE)


for _name in COMMAND_MODULES:
    importlib.import_module(f"{__package__}.{_name}")
