"""The dry run's memory tracker: live tensor-storage bytes under fake tensors.

`track_memory` enters torch's `FakeTensorMode` (shapes, dtypes and storages, no data) and a
`TorchDispatchMode` that sees every op's outputs and hands each output's storage to a
`MemoryLedger`. The ledger counts a storage once, from the op that creates it until it dies (a
`weakref.finalize` callback), so its running maximum is what `torch.cuda.max_memory_allocated`
reports on a GPU. torch is imported inside the functions only.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from typing import Any


class MemoryLedger:
    """Live storage bytes, counted once per storage from creation to death.

    Pure bookkeeping: `track` takes a storage object (anything with `nbytes()` that supports
    weak references) and a `weakref.finalize` callback subtracts its bytes when it dies. Views
    share their base's storage and are counted once; a storage that grows in place (resize_)
    is re-counted at its new size.
    """

    def __init__(self) -> None:
        self.live = 0
        self.peak = 0
        self.phase = "setup"
        self.phase_peaks: dict[str, int] = {}
        self.allocations = 0
        self._sizes: dict[int, int] = {}

    def track(self, storage: Any) -> None:
        key = id(storage)
        nbytes = int(storage.nbytes())
        old = self._sizes.get(key)
        if old is None:
            if nbytes == 0:
                return
            weakref.finalize(storage, self._release, key)
            self.allocations += 1
        elif old == nbytes:
            return
        self._sizes[key] = nbytes
        self.live += nbytes - (old or 0)
        self._note_peak()

    def _release(self, key: int) -> None:
        self.live -= self._sizes.pop(key, 0)

    def _note_peak(self) -> None:
        if self.live > self.peak:
            self.peak = self.live
        if self.live > self.phase_peaks.get(self.phase, -1):
            self.phase_peaks[self.phase] = self.live

    def set_phase(self, phase: str) -> None:
        self.phase = phase
        self._note_peak()  # what is live on entry belongs to the phase too

    @property
    def tracked_storages(self) -> int:
        return len(self._sizes)


def _tracking_mode(ledger: MemoryLedger) -> Any:
    """A TorchDispatchMode that hands every op output's storage to `ledger`."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    meta = torch.device("meta")

    class _TrackingMode(TorchDispatchMode):  # type: ignore[no-untyped-call]
        def __torch_dispatch__(
            self,
            func: Any,
            types: Any,
            args: Any = (),
            kwargs: Any = None,
        ) -> Any:
            out = func(*args, **(kwargs or {}))
            for leaf in tree_leaves(out):
                if isinstance(leaf, torch.Tensor) and leaf.device != meta:
                    ledger.track(leaf.untyped_storage())
            return out

    return _TrackingMode()  # type: ignore[no-untyped-call]


@contextlib.contextmanager
def track_memory() -> Iterator[MemoryLedger]:
    """Fake tensors plus the tracker: every tensor made inside is counted in the ledger."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    ledger = MemoryLedger()
    with FakeTensorMode(allow_non_fake_inputs=True), _tracking_mode(ledger):
        yield ledger
