"""The reliability harness: bad inputs and faults, each run as a user would
meet it, classified by what the tool did.

A :class:`Case` is one bad input or fault: an ``anytime`` command line (or a
library call) run in a fresh scratch folder after ``setup`` has written its
inputs there.  Every case runs in a forked child with a time limit, so a hang
is seen as a hang and a crash cannot take the harness down.  The outcome is
one of:

* ``clear error``: the expected non-zero exit status and exactly one line on
  stderr (or, for a library call, a typed :class:`nets.errors.AnytimeError`
  with the expected status);
* ``ok``: a valid input answered with status 0;
* ``traceback``, ``hang``, ``wrong status``, ``data lost``, ``silently wrong``
  (status 0 where an error was due, or ``verify`` found a wrong result):
  failures.

Exit statuses (the CLI's contract, README "Exit status"): 0 success, 1 I/O or
internal error, 2 usage or input error, 3 a budget or allocation that cannot
be met.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[2]
FAILURES = ("traceback", "hang", "wrong status", "data lost", "silently wrong")


@dataclass(frozen=True)
class Case:
    """One bad input or fault and the exit status a correct tool gives."""

    area: str  # what is attacked: "scenario", "catalog", "allocate", "outputs", ...
    name: str  # the bad input in a few words, e.g. "duration_s: 1e9"
    expect_status: int  # 0 ok, 1 I/O or internal, 2 usage or input, 3 cannot be met
    argv: tuple[str, ...] = ()  # anytime's arguments; "{repo}" is replaced by the repository root
    # a library call instead of argv: takes the scratch folder; raising an
    # AnytimeError gives that error's exit status, returning gives 0
    call: Callable[[Path], object] | None = None
    setup: Callable[[Path], None] | None = None  # writes the inputs into the scratch folder
    # after the run: a problem found ("data lost: ...", "wrong: ...") or None
    verify: Callable[[Path], str | None] | None = None
    timeout_s: float = 60.0


@dataclass
class Outcome:
    case: Case
    outcome: str
    status: int | None
    message: str  # the error line (shortened) or what went wrong
    seconds: float
    extra: dict = field(default_factory=dict)


def _child(case: Case, scratch: Path, report_fd: int) -> None:
    """Run one case in the forked child; write 'status\\n' + stderr to the pipe."""
    os.chdir(scratch)
    err = io.StringIO()
    status: int | str
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            if case.call is not None:
                from nets.errors import AnytimeError

                try:
                    case.call(scratch)
                    status = 0
                except AnytimeError as exc:
                    status = exc.exit_status
                    print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
                except OSError as exc:
                    status = 1
                    print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
            else:
                from anytime.cli import main

                argv = [a.replace("{repo}", str(REPO)) for a in case.argv]
                try:
                    status = main(argv)
                except SystemExit as exc:  # argparse's usage errors
                    status = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - that is what the harness looks for
        status = "traceback"
        err.write(traceback.format_exc())
    with os.fdopen(report_fd, "w") as pipe:
        pipe.write(f"{status}\n{err.getvalue()}")


def run_case(case: Case) -> Outcome:
    """Run ``case`` in a forked child in a fresh scratch folder and classify it."""
    with tempfile.TemporaryDirectory(prefix="reliability-") as tmp:
        scratch = Path(tmp)
        if case.setup is not None:
            case.setup(scratch)
        read_fd, write_fd = os.pipe()
        started = time.perf_counter()
        pid = os.fork()
        if pid == 0:  # child
            os.close(read_fd)
            try:
                _child(case, scratch, write_fd)
            finally:
                os._exit(0)
        os.close(write_fd)
        deadline = started + case.timeout_s
        finished = False
        while time.perf_counter() < deadline:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                finished = True
                break
            time.sleep(0.02)
        seconds = time.perf_counter() - started
        if not finished:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(read_fd)
            return Outcome(case, "hang", None, f"still running after {case.timeout_s:.0f} s", seconds)
        with os.fdopen(read_fd) as pipe:
            text = pipe.read()
        status_text, _, stderr = text.partition("\n")
        problem = case.verify(scratch) if case.verify is not None else None
    lines = [line for line in stderr.splitlines() if line.strip()]
    message = lines[-1][:200] if lines else ""
    if status_text in ("", "traceback") or "Traceback (most recent call last)" in stderr:
        return Outcome(case, "traceback", None, message or "child died", seconds)
    status = int(status_text)
    if problem is not None:
        kind = "data lost" if problem.startswith("data lost") else "silently wrong"
        return Outcome(case, kind, status, problem[:200], seconds)
    if status != case.expect_status:
        kind = "silently wrong" if status == 0 else "wrong status"
        return Outcome(case, kind, status, message or f"exit {status}", seconds)
    if status != 0 and case.call is None and len(lines) != 1:
        return Outcome(case, "wrong status", status, f"{len(lines)} lines on stderr: {message}", seconds)
    return Outcome(case, "ok" if status == 0 else "clear error", status, message, seconds)
