"""Run external programs: the one place danesync starts a subprocess.

Everything danesync runs is a short Postfix command (`postconf`, `postmap`,
`postfix`), so a call captures both streams, has a timeout and turns every
failure (non-zero exit, timeout, missing program) into `CommandError`.
"""

from __future__ import annotations

import os
import pty
import select
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from danesync.errors import CommandError

# Exit statuses for failures that have no status of their own, as a shell reports them.
NOT_FOUND = 127
NOT_EXECUTABLE = 126
TIMED_OUT = 124


@dataclass(frozen=True)
class Completed:
    """What a successful command wrote."""

    stdout: str
    stderr: str


def run_command(argv: Sequence[str], timeout: float = 60, *, stderr_tty: bool = False) -> str:
    """Run `argv` without a shell and return its standard output.

    `stderr_tty` gives the program a pseudo-terminal as standard error: the
    `postfix` command writes its diagnostics ("fatal: ... not running") only
    to a terminal, and to the mail log otherwise.
    """
    return run_command_full(argv, timeout, stderr_tty=stderr_tty).stdout


def run_command_full(
    argv: Sequence[str], timeout: float = 60, *, stderr_tty: bool = False
) -> Completed:
    """`run_command`, also returning standard error (warnings of a successful run)."""
    argv = tuple(argv)
    try:
        if stderr_tty:
            returncode, stdout, stderr = _run_with_tty(argv, timeout)
        else:
            completed = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout,
                check=False,
            )
            returncode, stdout, stderr = completed.returncode, completed.stdout, completed.stderr
    except FileNotFoundError as error:
        raise CommandError(argv, NOT_FOUND, f"{argv[0]}: program not found") from error
    except PermissionError as error:
        raise CommandError(argv, NOT_EXECUTABLE, f"{argv[0]}: {error.strerror}") from error
    except subprocess.TimeoutExpired as error:
        raise CommandError(argv, TIMED_OUT, f"timed out after {timeout:g} s") from error
    if returncode != 0:
        raise CommandError(argv, returncode, _text(stderr))
    return Completed(_text(stdout), _text(stderr))


def _text(data: bytes | None) -> str:
    return (data or b"").decode("utf-8", errors="replace")


def _run_with_tty(argv: tuple[str, ...], timeout: float) -> tuple[int, bytes, bytes]:
    controller, terminal = pty.openpty()
    try:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=terminal,
        )
    except BaseException:
        os.close(controller)
        raise
    finally:
        os.close(terminal)
    chunks: list[bytes] = []
    stop = threading.Event()
    # A thread drains the terminal so a chatty program never blocks on a full buffer.
    reader = threading.Thread(target=_drain, args=(controller, chunks, stop), daemon=True)
    reader.start()
    try:
        stdout, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise
    finally:
        # A daemon the program started may keep the terminal open: take what is
        # there and stop; the descriptor is closed only once the thread is done.
        stop.set()
        reader.join()
        os.close(controller)
    # The terminal turns "\n" into "\r\n".
    stderr = b"".join(chunks).replace(b"\r\n", b"\n")
    return process.returncode, stdout, stderr


def _drain(fd: int, chunks: list[bytes], stop: threading.Event) -> None:
    while True:
        ready, _, _ = select.select([fd], [], [], 0.05)
        if not ready:
            if stop.is_set():
                return
            continue
        try:
            data = os.read(fd, 4096)
        except OSError:  # EIO: every writer closed the terminal
            return
        if not data:
            return
        chunks.append(data)
