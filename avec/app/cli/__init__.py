"""`avec` command line: one command per technique, each runnable on the bundled models."""

from __future__ import annotations

import os
import sys
from typing import List, Optional

import typer

# pretty_exceptions_enable=False: no rich traceback box; `main` turns errors into one line
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="avec: algebraic value editing and interpretability "
                       "(errors are one line; set AVEC_DEBUG=1 for the full traceback)")

EXIT_FAILURE, EXIT_BAD_INPUT = 1, 2
# what avec's own validation raises for bad arguments, options, files and names
BAD_INPUT = (ValueError, KeyError, TypeError, IndexError, FileNotFoundError, FileExistsError,
             IsADirectoryError, NotADirectoryError, PermissionError)


@app.command()
def models() -> None:
    """List the bundled models and whether their packages are installed and float caches built."""
    from ...models import bundled_models, cache_root

    typer.echo(f"cache: {cache_root()}  (set AVEC_CACHE_DIR to move it)")
    for row in bundled_models():
        status = ("installed" if row["installed"] else "not installed") + (", cached" if row["cached"] else ", not cached")
        typer.echo(f"{row['name']:<14} {status:<26} {row['description']}")


@app.command()
def hooks(model: str = typer.Argument(..., help="bundled name, HF id, local dir or .gguf"),
          pattern: Optional[str] = typer.Option(None, help="glob filter, e.g. 'blocks.3.*'")) -> None:
    """Print a model's hook points (in forward order) with their shapes."""
    from ...models import load

    lm = load(model)
    names = lm.resolve(pattern) if pattern else lm.hook_points
    for name in names:
        site = lm.site(name)
        extra = " (read-only)" if site.read_only else ""
        typer.echo(f"{name:<28} {site.layout:<28} <- {site.module} {site.kind}{extra}")


@app.command()
def tour(out: str = typer.Option("avec-tour.html", help="where to write the HTML report"),
         model: str = typer.Option("smollm2", help="language model for the LM sections"),
         quick: bool = typer.Option(False, help="smaller sample sizes"),
         only: Optional[List[str]] = typer.Option(None, help="run only sections whose title contains this"),
         threads: Optional[int] = typer.Option(None, help="torch CPU threads (default: torch's; use 1 when "
                                               "other jobs share the cores: oversubscribed threads crawl)")) -> None:
    """Run every technique on the bundled models and write one self-contained HTML report."""
    import torch

    from ...io import check_out_option
    from ..tour import run_tour

    check_out_option(out, (".html", ".htm"))
    if threads is not None and threads < 1:
        raise typer.BadParameter(f"--threads must be >= 1, got {threads}")
    if threads:
        torch.set_num_threads(threads)

    path, failed = run_tour(out, model=model, quick=quick, only=only)
    typer.echo(f"wrote {path}")
    if failed:
        typer.echo(f"sections that failed: {', '.join(failed)}", err=True)
        raise typer.Exit(1)


@app.command()
def serve(model: str = typer.Option("smollm2", help="language model, loaded once and shared by every page"),
          host: str = typer.Option("127.0.0.1", help="address to listen on (anything but localhost exposes the "
                                   "app, and the model's compute, to the network)"),
          port: int = typer.Option(8000, help="port to listen on"),
          data_dir: Optional[str] = typer.Option(None, "--data-dir", help="folder of saved vectors, SAEs and "
                                                 "transcoders (.safetensors; circuit-tracer folders) the pages may "
                                                 "load; no other file is ever read"),
          feature_contexts: int = typer.Option(256, help="held-out contexts (32 tokens each) feature pages take "
                                               "their top examples from, read once per dictionary (1..4096)")) -> None:
    """Start the local web app: steering, lens and DLA, patching, maze, SAE features, attribution graphs."""
    from pathlib import Path

    from ..server import LOCAL_HOSTS, MAX_FEATURE_CONTEXTS, serve as run_server

    if not 1 <= port <= 65535:
        raise typer.BadParameter(f"--port must be in 1..65535, got {port}")
    if data_dir is not None and not Path(data_dir).is_dir():
        raise typer.BadParameter(f"--data-dir {data_dir!r} is not a folder")
    if not 1 <= feature_contexts <= MAX_FEATURE_CONTEXTS:
        raise typer.BadParameter(f"--feature-contexts must be in 1..{MAX_FEATURE_CONTEXTS}, got {feature_contexts}")
    if host not in LOCAL_HOSTS:
        typer.echo(f"warning: listening on {host}, not localhost: anyone who can reach this machine can use the "
                   "app and run the model on their input", err=True)
    run_server(model, host=host, port=port, data_dir=data_dir, echo=typer.echo, feature_contexts=feature_contexts)


def _register_techniques() -> None:
    """Each technique package adds its own commands (`avec lens`, `avec patch`, ...)."""
    from . import circuits as circuits_cli
    from . import dictionaries as dictionaries_cli
    from . import lens as lens_cli
    from . import maze as maze_cli
    from . import patching as patching_cli
    from . import probes as probes_cli
    from . import steering as steering_cli
    from . import transcoders as transcoder_cli

    for module in (steering_cli, lens_cli, patching_cli, probes_cli, maze_cli, dictionaries_cli, transcoder_cli,
                   circuits_cli):
        module.register(app)


_register_techniques()


def _debug() -> bool:
    return os.environ.get("AVEC_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def error_line(e: BaseException) -> str:
    """``error: <message>`` for an exception: its message on one line (a KeyError without its quotes);
    exceptions that are not bad input also name their type and how to see the traceback."""
    msg = e.args[0] if isinstance(e, KeyError) and len(e.args) == 1 else e
    msg = " ".join(str(msg).split()) or type(e).__name__
    if isinstance(e, BAD_INPUT):
        return f"error: {msg}"
    return f"error: {type(e).__name__}: {msg} (set AVEC_DEBUG=1 for the traceback)"


def main(argv: Optional[List[str]] = None) -> None:
    """The `avec` console script: the typer app, with every error printed as one line on stderr,
    ``error: <what was wrong, what is allowed>``, and exit status 2 for bad input (usage errors,
    ``typer.BadParameter`` and the ``BAD_INPUT`` exceptions), 1 for other failures.
    ``AVEC_DEBUG=1`` re-raises instead, for the full traceback."""
    # typer raises its own (vendored) click's exceptions: take them from where BadParameter lives
    click = sys.modules[typer.BadParameter.__module__]
    try:
        rv = app(args=argv, prog_name="avec", standalone_mode=False)
    except click.NoArgsIsHelpError as e:  # `avec` / `avec maze` alone: the help
        e.show()
        sys.exit(e.exit_code)
    except click.ClickException as e:  # usage errors, BadParameter raised by the commands
        if _debug():
            raise
        sys.stdout.flush()
        hint = f" (see '{e.ctx.command_path} --help')" if getattr(e, "ctx", None) is not None and \
            isinstance(e, click.UsageError) else ""
        print(f"error: {' '.join(e.format_message().split())}{hint}", file=sys.stderr, flush=True)
        sys.exit(e.exit_code)
    except typer.Abort:  # Ctrl-C / EOF at a prompt
        print("Aborted!", file=sys.stderr, flush=True)
        sys.exit(EXIT_FAILURE)
    except Exception as e:  # SystemExit / KeyboardInterrupt are not Exceptions
        if _debug():
            raise
        sys.stdout.flush()
        print(error_line(e), file=sys.stderr, flush=True)
        sys.exit(EXIT_BAD_INPUT if isinstance(e, BAD_INPUT) else EXIT_FAILURE)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
