"""The one exception type for user-facing errors, and the ``main()`` that every emo CLI runs.

A user error (a bad file, model, camera, option value) is printed as one line on stderr, with
exit status 2 and no traceback; Ctrl-C outside a clean-stop section exits 130.
"""
from __future__ import annotations

import sys
from typing import Callable


class EmoError(Exception):
    """A problem with the user's input (file, model, camera, data) that a user can fix.

    The message names the thing and says what to do; CLIs print it on one line and exit non-zero.
    """


def cli_main(app: Callable, prog: str, install_hint: str = "") -> None:
    """Run a Typer app: its usage errors and EmoErrors become one line and exit 2. With
    ``install_hint``, a missing module (torch on an edge install, say) does too."""
    try:
        code = app(standalone_mode=False)
    except EmoError as e:
        _fail(prog, str(e), 2)
    except ModuleNotFoundError as e:
        if not install_hint:
            raise
        _fail(prog, f"{e.name} is not installed; {install_hint}", 2)
    except KeyboardInterrupt:
        _fail(prog, "interrupted", 130)
    except BrokenPipeError:
        sys.exit(0)
    except Exception as e:  # Click's (or Typer's vendored Click's) usage errors and Abort
        name = type(e).__name__
        if name == "Abort":
            _fail(prog, "interrupted", 130)
        if name == "NoArgsIsHelpError" and hasattr(e, "ctx"):
            print(e.ctx.get_help())
            sys.exit(0)
        if hasattr(e, "format_message") and hasattr(e, "exit_code"):
            _fail(prog, " ".join(e.format_message().split()) + f" (see {prog} --help)", 2)
        raise
    sys.exit(code if isinstance(code, int) else 0)


def _fail(prog: str, message: str, code: int) -> None:
    print(f"{prog}: error: {message}" if code == 2 else f"{prog}: {message}", file=sys.stderr)
    sys.exit(code)
