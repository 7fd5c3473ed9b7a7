"""Typed messages that workers post to the UI thread (workers never touch widgets)."""

from __future__ import annotations

from textual.message import Message

from engine.machine.hardware import MachineSnapshot


class MachineUpdated(Message):
    """A fresh machine snapshot from the NVML poll worker."""

    def __init__(self, snapshot: MachineSnapshot) -> None:
        super().__init__()
        self.snapshot = snapshot
