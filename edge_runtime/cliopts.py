"""What the three emo CLIs share: ``--version``, ``--verbose/-v`` and ``--quiet/-q`` (stdlib logging).

Progress and info lines go through :mod:`logging` (logger ``emo``) on stderr; a user error stays one
line via errors.py. OpenCV's and FFmpeg's own log lines are silenced here, by the CLI, and only
without ``--verbose``: importing ``emo.edge_runtime`` changes no process-wide setting.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Optional

import typer

from . import __version__

log = logging.getLogger("emo")


def version_callback(prog: str):
    """A Typer option callback that prints ``PROG VERSION`` and exits."""
    def show(value: bool) -> None:
        if value:
            print(f"{prog} {__version__}")
            raise typer.Exit()
    return show


def version_option(prog: str):
    return typer.Option(False, "--version", callback=version_callback(prog), is_eager=True, expose_value=True,
                        help=f"Print {prog}'s version and exit.")


VERBOSE = typer.Option(False, "--verbose", "-v", help="More detail on stderr (debug lines; OpenCV's own messages too).")
QUIET = typer.Option(False, "--quiet", "-q", help="Only warnings and errors on stderr.")


def setup_logging(verbose: bool = False, quiet: bool = False) -> None:
    """Logger ``emo`` to stderr at INFO (DEBUG with verbose, WARNING with quiet); silence OpenCV unless verbose."""
    if verbose and quiet:
        raise typer.BadParameter("--verbose and --quiet contradict each other; give one")
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False
    quiet_opencv(not verbose)


def quiet_opencv(silent: bool = True) -> None:
    """FFmpeg (inside OpenCV) and OpenCV print their own lines ("moov atom not found", V4L2 probing,
    DNN shape errors) between emo's one-line errors; the CLIs silence them. The environment variables
    reach worker processes too (OpenCV reads them when it loads and when a capture opens)."""
    if not silent:
        return
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
    os.environ.setdefault("OPENCV_LOG_LEVEL", "SILENT")
    try:
        import cv2

        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    except (ImportError, AttributeError):
        pass


def root_callback(app: typer.Typer, prog: str) -> None:
    """Give a multi-command Typer app the shared root options."""
    @app.callback()
    def _root(version: Optional[bool] = version_option(prog), verbose: bool = VERBOSE, quiet: bool = QUIET) -> None:
        setup_logging(verbose, quiet)
