"""run_command: the one place danesync starts programs, tested with real ones."""

from __future__ import annotations

import time

import pytest

from danesync.actions.execute import NOT_FOUND, TIMED_OUT, run_command, run_command_full
from danesync.errors import CommandError, DanesyncError


class TestRunCommand:
    """Output on success; CommandError with the data a log line needs on failure."""

    def test_returns_stdout(self) -> None:
        assert run_command(["sh", "-c", "echo out; echo err >&2"]) == "out\n"
        completed = run_command_full(["sh", "-c", "echo out; echo warning: w >&2"])
        assert (completed.stdout, completed.stderr) == ("out\n", "warning: w\n")

    def test_no_stdin(self) -> None:
        assert run_command(["cat"], timeout=5) == ""

    def test_failure_carries_argv_status_and_stderr(self) -> None:
        with pytest.raises(CommandError) as caught:
            run_command(["sh", "-c", "echo first >&2; echo 'fatal: broken' >&2; exit 3"])
        error = caught.value
        assert isinstance(error, DanesyncError)
        assert error.argv[0] == "sh"
        assert error.returncode == 3
        assert error.stderr == "first\nfatal: broken\n"
        assert str(error).endswith("exited 3: fatal: broken")

    def test_missing_program(self) -> None:
        with pytest.raises(CommandError) as caught:
            run_command(["/nonexistent/postfix", "reload"])
        assert caught.value.returncode == NOT_FOUND
        assert "program not found" in str(caught.value)

    def test_timeout(self) -> None:
        with pytest.raises(CommandError) as caught:
            run_command(["sleep", "5"], timeout=0.2)
        assert caught.value.returncode == TIMED_OUT
        assert "timed out after 0.2 s" in str(caught.value)


class TestStderrTerminal:
    """stderr_tty: programs that only explain themselves to a terminal (postfix)."""

    SCRIPT = "if [ -t 2 ]; then echo 'fatal: on a terminal' >&2; fi; echo out; exit {status}"

    def test_without_terminal_the_message_is_lost(self) -> None:
        with pytest.raises(CommandError) as caught:
            run_command(["sh", "-c", self.SCRIPT.format(status=1)])
        assert caught.value.stderr == ""

    def test_with_terminal_the_message_is_kept(self) -> None:
        with pytest.raises(CommandError) as caught:
            run_command(["sh", "-c", self.SCRIPT.format(status=1)], stderr_tty=True)
        assert caught.value.stderr == "fatal: on a terminal\n"
        assert run_command(["sh", "-c", self.SCRIPT.format(status=0)], stderr_tty=True) == "out\n"

    def test_large_output_does_not_block(self) -> None:
        script = "i=0; while [ $i -lt 3000 ]; do echo line $i >&2; i=$((i+1)); done; exit 2"
        with pytest.raises(CommandError) as caught:
            run_command(["sh", "-c", script], timeout=20, stderr_tty=True)
        assert caught.value.stderr.splitlines()[-1] == "line 2999"

    def test_background_child_holding_the_terminal_does_not_hang(self) -> None:
        # As `postfix start` leaves a daemon behind; this one keeps the terminal open.
        started = time.monotonic()
        output = run_command(
            ["sh", "-c", "sleep 5 >/dev/null & echo 'started' >&2; echo done"],
            timeout=10,
            stderr_tty=True,
        )
        assert output == "done\n"
        assert time.monotonic() - started < 3

    def test_timeout(self) -> None:
        with pytest.raises(CommandError) as caught:
            run_command(["sleep", "5"], timeout=0.2, stderr_tty=True)
        assert caught.value.returncode == TIMED_OUT
