"""Child processes that are started, watched and stopped by process id."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, and that this process has
    not handed out before (the kernel may offer a just-released port again, and two servers
    about to start would then both take it)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def unprivileged_user() -> str | None:
    """The user to run servers as when we are root (PostgreSQL refuses to run as root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise RuntimeError("running as root and no unprivileged user (postgres, nobody) exists")


def open_path_to(directory: Path, user: str | None) -> None:
    """Let `user` reach `directory`: a server dropped to that user must traverse every ancestor.

    The directory itself (a run directory, often a 0700 mkdtemp) is opened for traversal only
    (o+x, never read); an ancestor that blocks the user is reported rather than changed.
    """
    if user is None:
        return
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(directory.stat().st_mode | stat.S_IXOTH)
    uid = pwd.getpwnam(user).pw_uid
    for ancestor in directory.resolve().parents:
        mode = ancestor.stat()
        if mode.st_uid != uid and not mode.st_mode & stat.S_IXOTH:
            raise RuntimeError(
                f"{user} cannot reach {directory}: {ancestor} is not traversable by others"
            )


def hand_over(path: Path, user: str | None) -> None:
    """Give `path` (recursively) to `user`, so a server running as that user can write it."""
    if user is None:
        return
    for entry in [path, *path.rglob("*")]:
        shutil.chown(entry, user=user, group=pwd.getpwnam(user).pw_gid)


def as_user(user: str | None) -> list[str]:
    """The command prefix that runs a command as `user` (with its own group, and none of
    root's: kept, root's groups would decide its access to root's directories instead of
    their "other" bits). The child drops privileges itself, through `setpriv`, rather than
    through Popen's `user=`: with that, Python forks instead of vforking, and a fork of a
    process with gRPC's threads can crash in the child before it execs (a segfault met
    restarting PostgreSQL beside open gRPC channels)."""
    if user is None:
        return []
    entry = pwd.getpwnam(user)
    return ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups", "--"]


class ManagedProcess:
    """One child process with its log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        user: str | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.log_path = log_path
        self.argv, self.user, self.env, self.cwd = list(argv), user, env, cwd
        self._log: IO[bytes] = log_path.open("ab")
        self.process = subprocess.Popen(
            [*as_user(user), *argv],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            # Its own process group: Ctrl-C in the terminal reaches us, and we stop it in order.
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def respawn(self) -> ManagedProcess:
        """The same command started again (after it exited), logging to the same file."""
        self._log.close()
        return ManagedProcess(
            self.name, self.argv, self.log_path, user=self.user, env=self.env, cwd=self.cwd
        )

    def alive(self) -> bool:
        return self.process.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            raise RuntimeError(
                f"{self.name} exited with {self.process.returncode}; see {self.log_path}:\n"
                + self.log_tail()
            )

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 20.0, sig: int = signal.SIGTERM) -> None:
        if self.alive():
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()

    def kill(self) -> None:
        """SIGKILL, for tests that prove a crash loses nothing."""
        if self.alive():
            self.process.kill()
            self.process.wait()
        self._log.close()


class Supervisor:
    """Restarts the processes it watches when they die, with backoff, as a process
    supervisor or the kubelet would: 1 s, then twice as long each time up to 30 s, back to
    1 s once a process has stayed up for a minute. Each exit and restart is a line in its log
    (which `make run` merges into all.log)."""

    def __init__(
        self,
        processes: dict[str, ManagedProcess],
        log_path: Path,
        *,
        first_delay: float = 1.0,
        max_delay: float = 30.0,
        stable_after: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._processes = processes
        self._log_path = log_path
        self._first, self._max, self._stable = first_delay, max_delay, stable_after
        self._clock = clock
        self._delay: dict[str, float] = {}
        self._started: dict[str, float] = dict.fromkeys(processes, clock())
        self._due: dict[str, float] = {}
        self.restarts: dict[str, int] = dict.fromkeys(processes, 0)

    def say(self, event: str, **fields: object) -> None:
        line = json.dumps({"event": event, "logger": "supervisor", **fields})
        with self._log_path.open("a") as log:
            log.write(line + "\n")

    def check(self) -> list[str]:
        """Notice exits and start what is due; the names (re)started now."""
        now = self._clock()
        started: list[str] = []
        for name, process in list(self._processes.items()):
            if name in self._due:
                if now >= self._due[name]:
                    del self._due[name]
                    self._processes[name] = process.respawn()
                    self._started[name] = now
                    self.restarts[name] += 1
                    self.say("restarted", service=name, pid=self._processes[name].pid)
                    started.append(name)
                continue
            if process.alive():
                if now - self._started[name] >= self._stable:
                    self._delay.pop(name, None)
                continue
            delay = self._delay.get(name, self._first / 2) * 2
            delay = min(delay, self._max)
            self._delay[name] = delay
            self._due[name] = now + delay
            self.say(
                "exited; restarting",
                service=name,
                code=process.process.returncode,
                restart_in_s=delay,
            )
        return started
