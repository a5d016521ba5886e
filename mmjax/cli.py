"""Command-line entry points: a user error (a bad value, a missing or foreign file) ends a
command with one line naming it, not a traceback; `--verbose` prints the traceback too.

Every `python -m mmjax.*` command runs its `main` through `run`. It imports nothing of mmjax,
so any package may use it.
"""

import sys
import traceback

# What a command reports as one line: usage and config errors, bad paths, unreadable or
# foreign files, non-finite training. Anything else is a bug and keeps its traceback.
REPORTED = (ValueError, OSError, RuntimeError)
VERBOSE_HELP = "Print the full traceback of an error, not only its one-line message."


def fail(prog: str, error: BaseException, status: int, verbose: bool):
    """Exits with `status` after one line naming the error (the traceback too if verbose)."""
    if verbose:
        traceback.print_exception(error)
    message = " ".join(str(error).split()) or type(error).__name__
    hint = "" if verbose else " (--verbose prints the traceback)"
    print(f"{prog}: error: {message}{hint}", file=sys.stderr, flush=True)
    sys.exit(status)


def run(main, prog: str, argv=None):
    """Runs `main(argv)` as the command `prog`: `--verbose` is taken from the arguments, a
    REPORTED error exits with status 1 after one line; an int result is the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in argv
    argv = [a for a in argv if a != "--verbose"]
    try:
        result = main(argv)
    except REPORTED as e:
        fail(prog, e, 1, verbose)
    sys.exit(result if isinstance(result, int) else 0)
