"""The ``metareg`` command line.

The click group is built by :func:`make_cli` (called by :func:`main`), never at import time, so
importing this module runs no plugin hook.  Plugins may add commands through the
``register_commands(cli)`` hook.  Every :class:`~metareg.errors.MetaregError` reaching the top is
printed as one line on stderr with exit status 2 and no traceback.
"""

from __future__ import annotations

import logging
import sys

import click

from . import __version__
from .errors import MetaregError

__all__ = ["make_cli", "main"]


class MetaregGroup(click.Group):
    """A click group that turns metareg's user errors into one line and exit status 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MetaregError as e:
            raise click.exceptions.Exit(_fail(str(e))) from None

    def main(self, *args, **kwargs):
        try:
            return super().main(*args, **kwargs)
        except MetaregError as e:  # raised while building sub-commands or parsing
            sys.exit(_fail(str(e)))


def _fail(message: str) -> int:
    click.echo(f"Error: {message}", err=True)
    return 2


class _WarningLines(logging.Handler):
    """metareg's warnings (plugin load problems among them) as one ``warning:`` line each on
    stderr; the library itself sets no handler."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(f"warning: {record.getMessage()}", err=True)


def _install_warning_handler() -> None:
    logger = logging.getLogger("metareg")
    if not any(isinstance(h, _WarningLines) for h in logger.handlers):
        handler = _WarningLines(level=logging.WARNING)
        logger.addHandler(handler)
    logger.propagate = False  # not twice (the root logger's handlers, or logging's last resort)


def make_cli(manager=None) -> click.Group:
    """Build the command group; ``manager`` (a PluginManager) is for tests."""
    from .commands.listing import info_cmd, list_cmd, plugins_cmd
    from .commands.run import run_cmd

    @click.group(cls=MetaregGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
    @click.version_option(__version__, prog_name="metareg")
    @click.option("-v", "--verbose", count=True, help="log more (-v info, -vv debug)")
    @click.pass_context
    def cli(ctx: click.Context, verbose: int) -> None:
        """metareg: meta-learning and multi-task learning behind one plugin registry.

        \b
        metareg list                      algorithms, benchmarks and backbones
        metareg info maml                 hyperparameters and compatible benchmarks
        metareg run maml --benchmark sinusoid --steps 3000
        """
        if verbose:
            logging.basicConfig(level=logging.DEBUG if verbose > 1 else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
            logger = logging.getLogger("metareg")  # the root handler now formats everything
            logger.handlers = [h for h in logger.handlers if not isinstance(h, _WarningLines)]
            logger.propagate = True
        ctx.obj = manager

    for cmd in (list_cmd, info_cmd, plugins_cmd, run_cmd):
        cli.add_command(cmd)
    for module, name in (("ops", "ops"), ("bench", "bench"), ("compare", "compare"), ("evaluate", "eval_cmd"),
                         ("check_plugin", "check_plugin_cmd")):
        try:
            mod = __import__(f"metareg.commands.{module}", fromlist=[name])
        except ImportError:
            continue
        cmd = getattr(mod, name, None)
        if isinstance(cmd, click.Command):
            cli.add_command(cmd)
    from .plugins import get_manager

    m = manager or get_manager()
    m.hook.register_commands(cli=cli)
    m.registry  # every command reports the plugins' load problems the same way, once, right here
    return cli


_ARGV: list[str] = []


def invocation_args() -> list[str]:
    """The arguments this process's command line was given (``metareg run --nproc`` relaunches them)."""
    return list(_ARGV)


def main(argv: list[str] | None = None) -> None:
    global _ARGV
    _ARGV = list(sys.argv[1:] if argv is None else argv)
    _install_warning_handler()  # before any plugin loads: every load problem becomes one line
    try:
        cli = make_cli()
    except MetaregError as e:
        sys.exit(_fail(str(e)))
    cli.main(args=argv, prog_name="metareg")


if __name__ == "__main__":  # pragma: no cover
    main()
