"""The launcher process of multi-process techniques and its process group: started once per pytest process, fed
launch specs on stdin, stopped as a whole (SIGTERM, then SIGKILL) when a launch outlives its timeout; and reading
what the ranks left behind (logs, exit codes)."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TEMP_PREFIX = "pytest-infer-ranks-"
STOP_GRACE_S = 3.0  # SIGTERM, then SIGKILL after this long


class LauncherServer:
    """The launcher process (``python -m pytest_infer._tp_worker --serve``), one per pytest process.

    Started on the first launch and kept: it imports torch and transformers once, and on CPU the ranks of
    every launch are forked from it. It runs in a process group of its own; a launch that times out stops
    the whole group (the next launch starts a fresh launcher). It exits with the pytest process."""

    _current: LauncherServer | None = None

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX))
        self.log_path = self.folder / "launcher.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pytest_infer._tp_worker", "--serve"],
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stopped as a whole
            )

    @classmethod
    def get(cls) -> LauncherServer:
        if cls._current is None or not cls._current.alive():
            if cls._current is not None:
                cls._current.stop()
            cls._current = cls()
        return cls._current

    def alive(self) -> bool:
        return self.proc.poll() is None

    def submit(self, spec_path: Path) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{spec_path}\n".encode())
        self.proc.stdin.flush()

    def wait(self, answer: Path, timeout: float) -> int | None:
        """The launch's exit status, or None when it outlived ``timeout`` or the launcher died."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if answer.is_file():
                return int(answer.read_text().strip() or 1)
            if not self.alive():
                return int(answer.read_text().strip() or 1) if answer.is_file() else None
            time.sleep(0.05)
        return None

    def sweep(self) -> None:
        """Kill any process of the group but the launcher itself (there should be none)."""
        for pid in group_members(self.proc.pid):
            if pid != self.proc.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def stop(self) -> tuple[int, int]:
        """Stop the launcher and everything it started; returns (stopped, still alive)."""
        if LauncherServer._current is self:
            LauncherServer._current = None
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        result = stop_group(self.proc)
        shutil.rmtree(self.folder, ignore_errors=True)
        return result

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def log_since(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    @classmethod
    def shutdown(cls) -> None:
        """At exit: end the launcher (EOF on its input, then the process group)."""
        server = cls._current
        if server is None:
            return
        cls._current = None
        with contextlib.suppress(OSError):
            if server.proc.stdin is not None:
                server.proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.proc.wait(timeout=10)
        stop_group(server.proc)
        shutil.rmtree(server.folder, ignore_errors=True)


# --- process groups -------------------------------------------------------------------------------
def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``."""
    proc = Path("/proc")
    if proc.is_dir():
        members = []
        for entry in proc.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[-1].split()
            if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                members.append(int(entry.name))
        return members
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return []
    except PermissionError:
        pass
    return [pgid]


def stop_group(proc: subprocess.Popen[bytes], grace: float = STOP_GRACE_S) -> tuple[int, int]:
    """Stop every process of ``proc``'s group: SIGTERM, then SIGKILL. Returns (stopped, still alive)."""
    pgid = proc.pid
    members = group_members(pgid)
    stopped = len(members)
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        if not members:
            break
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            proc.poll()  # reap the launcher as soon as it dies
            members = group_members(pgid)
            if not members:
                break
            time.sleep(0.05)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
    return stopped, len(group_members(pgid))


def read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return ""


def last_lines(text: str, n: int) -> list[str]:
    return text.splitlines()[-n:] if text else []


def log_tail(folder: Path, local_rank: int) -> list[str]:
    """The end of a rank's stderr; for a crash, faulthandler's report (innermost frame first) instead."""
    logs = sorted((folder / "logs").glob(f"**/attempt_*/{local_rank}/stderr.log"))
    lines = read(logs[-1]).splitlines() if logs else []
    crash = next((i for i, line in enumerate(lines) if line.startswith("Fatal Python error")), None)
    if crash is None:
        return lines[-15:]
    report = [line for line in lines[crash:] if not line.startswith("Extension modules")]
    return report[:16]


def exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


atexit.register(LauncherServer.shutdown)
