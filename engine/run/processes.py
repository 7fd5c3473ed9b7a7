"""Which processes of a run are alive, from what state.json recorded.

Every check pairs a pid with its process's create time (a reused pid never passes for the old
process), and a process group with its leader's: the kernel does not hand out a group's id
again while any member lives, so a group whose leader is gone but whose members remain is
still the run's.
"""

from __future__ import annotations

import contextlib
import os
import signal
from typing import Any

# Two create times of one process read at different moments agree well within this.
_SAME_PROCESS_SECONDS = 1.0


def create_time(pid: int) -> float | None:
    import psutil

    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def pid_alive(pid: Any, created: Any = None) -> bool:
    """`pid` runs (not a zombie), and is the process that was created at `created`."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        if created is None:
            return True
        return abs(proc.create_time() - float(created)) < _SAME_PROCESS_SECONDS
    except (psutil.Error, TypeError, ValueError):
        return False


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of group `pgid`."""
    import psutil

    members = []
    for proc in psutil.process_iter(["status"]):
        with contextlib.suppress(OSError, psutil.Error):
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(proc.pid)
    return members


def group_alive(pgid: Any, leader_created: Any = None) -> bool:
    """Process group `pgid` has a live member, and is the group that was made at
    `leader_created` (its leader's create time)."""
    if not isinstance(pgid, int) or pgid <= 0:
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # another user's group: the id was reused
    if leader_created is not None:
        leader = create_time(pgid)
        if leader is not None and abs(leader - float(leader_created)) >= _SAME_PROCESS_SECONDS:
            return False  # a new group under the old id
    return bool(group_members(pgid))


def trainer_groups(state: dict[str, Any]) -> list[tuple[int, float | None]]:
    """(pgid, leader create time) of the launcher's and the trainer's process groups."""
    groups: list[tuple[int, float | None]] = []
    if isinstance(state.get("pgid"), int):
        groups.append((state["pgid"], state.get("launcher_create_time")))
    pgid = state.get("trainer_pgid")
    if isinstance(pgid, int) and pgid not in [g for g, _ in groups]:
        # The trainer leads its own group when it is the launched process or a torchrun worker.
        leader = state.get("trainer_create_time") if pgid == state.get("trainer_pid") else None
        groups.append((pgid, leader))
    return groups


def trainer_processes(state: dict[str, Any]) -> list[int]:
    """The run's live training processes (launcher, workers, trainer): empty when none is
    left. The supervisor is not one of them."""
    alive: set[int] = set()
    for pgid, leader in trainer_groups(state):
        if group_alive(pgid, leader):
            alive.update(group_members(pgid))
    times = state.get("pid_times") or {}
    for pid in state.get("pids") or []:
        if isinstance(pid, int) and pid_alive(pid, times.get(str(pid))):
            alive.add(pid)
    if pid_alive(state.get("trainer_pid"), state.get("trainer_create_time")):
        alive.add(int(state["trainer_pid"]))
    alive.discard(os.getpid())
    return sorted(alive)


def supervisor_alive(state: dict[str, Any]) -> bool:
    return pid_alive(state.get("supervisor_pid"), state.get("supervisor_create_time"))


def signal_trainers(state: dict[str, Any], sig: int) -> list[int]:
    """Send `sig` to every live group and recorded process of the run's training; returns
    the processes that were alive."""
    alive = trainer_processes(state)
    for pgid, leader in trainer_groups(state):
        if group_alive(pgid, leader):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)
    for pid in alive:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
    return alive


def kill_trainers(state: dict[str, Any]) -> list[int]:
    return signal_trainers(state, signal.SIGKILL)
