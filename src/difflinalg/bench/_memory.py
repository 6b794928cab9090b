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

from .._system import available_memory_bytes

__all__ = ["PeakMemory", "available_memory_bytes", "heap_for_memory", "heap_for_timing"]

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


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def _mallopt(settings: dict[int, int]) -> bool:
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    return all(mallopt(ctypes.c_int(p), ctypes.c_int(v)) == 1 for p, v in settings.items())


def heap_for_memory() -> bool:
    """Make resident memory follow the live allocations (glibc; False where unsupported).

    By default glibc serves a freed block's pages to later requests of other sizes from its
    heap and pads the heap by 128 KiB per growth, so the resident peak of a block of code
    depends on what the process allocated before (the same forward+backward measured 3.1x
    or 5.3x its output at 2048 x 64). With every allocation of 64 KiB or more in its own
    mapping and no padding, the peak is that of the live tensors, for every method alike.
    Call it before the warm-up, and :func:`heap_for_timing` before timing.
    """
    return _mallopt({_M_MMAP_THRESHOLD: 64 * 1024, _M_TOP_PAD: 0,
                     _M_TRIM_THRESHOLD: 128 * 1024})


def heap_for_timing() -> bool:
    """glibc's steady state of a long-running process: large blocks reused from the heap.

    The values are the ceiling glibc's dynamic threshold reaches on 64-bit (32 MiB), with the
    trim threshold at twice it as the dynamic rule sets it, so that timings do not pay for
    fresh page faults on every call (which :func:`heap_for_memory` would impose).
    """
    return _mallopt({_M_MMAP_THRESHOLD: 32 * 1024 * 1024, _M_TOP_PAD: 128 * 1024,
                     _M_TRIM_THRESHOLD: 64 * 1024 * 1024})


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
