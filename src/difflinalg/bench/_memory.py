"""Peak resident memory of a block of code, read from the kernel (Linux ``/proc``).

The measurement is the process's high-water mark of resident memory (``VmHWM``) after the
block minus its resident memory (``VmRSS``) just before it, with the high-water mark reset
in between by writing ``5`` to ``/proc/self/clear_refs``. It counts every allocation that
touches memory - torch's CPU allocator, BLAS/LAPACK workspaces, the autograd graph - and
nothing that was freed before the block started: freed heap pages are handed back to the
kernel first (glibc ``malloc_trim``), so a block that reuses them is charged for them.

Run it in a fresh process that has done the same work once (a warm-up), so that one-off
initialisation is in the baseline and not in the peak. Where ``/proc`` is missing or not
writable the result is ``None`` with a reason, never an exception.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from types import TracebackType

__all__ = ["PeakMemory", "available_memory_bytes"]

_STATUS = "/proc/self/status"
_CLEAR_REFS = "/proc/self/clear_refs"
_RESET_PEAK_RSS = "5"


def _status_kib(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``), or None."""
    try:
        with open(_STATUS) as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _release_free_heap() -> None:
    """Return free malloc pages to the kernel so that reusing them counts as new memory."""
    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim(ctypes.c_size_t(0))
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return


def available_memory_bytes() -> int | None:
    """``MemAvailable`` from ``/proc/meminfo`` in bytes, or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


class PeakMemory:
    """Context manager measuring the extra resident memory a block of code needs at its peak.

    After the block, ``peak_extra_bytes`` is ``VmHWM - VmRSS(before)`` in bytes, or ``None``
    (then ``reason`` says why). ``enabled=False`` turns it into a no-op that reports None.

    Example:
        >>> with PeakMemory() as mem:
        ...     x = bytearray(50_000_000)
        >>> mem.peak_extra_bytes is None or mem.peak_extra_bytes > 40_000_000
        True
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.peak_extra_bytes: int | None = None
        self.reason: str | None = None if enabled else "disabled"
        self._baseline_kib: int | None = None

    def __enter__(self) -> PeakMemory:
        if not self.enabled:
            return self
        gc.collect()
        _release_free_heap()
        try:
            with open(_CLEAR_REFS, "w") as clear_refs:
                clear_refs.write(_RESET_PEAK_RSS)
        except OSError as exc:
            self.reason = f"cannot reset the peak RSS ({_CLEAR_REFS}: {exc.strerror})"
            return self
        self._baseline_kib = _status_kib("VmRSS")
        if self._baseline_kib is None:
            self.reason = f"VmRSS not readable from {_STATUS}"
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._baseline_kib is None:
            return
        peak_kib = _status_kib("VmHWM")
        if peak_kib is None:
            self.reason = f"VmHWM not readable from {_STATUS}"
            return
        self.peak_extra_bytes = max(peak_kib - self._baseline_kib, 0) * 1024
