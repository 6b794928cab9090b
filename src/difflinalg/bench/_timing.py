"""Measuring a differentiable callable, and running each case in a fresh process.

Three layers, each usable on its own by any suite:

* :func:`measure` - ``torch.utils.benchmark.Timer(...).blocked_autorange()``: median and
  inter-quartile range of a callable. A call slower than ``min_run_time`` is measured once
  after one untimed call (that is what ``blocked_autorange`` does); nothing here reads a
  clock around a call to report it.
* :func:`profile_differentiable` - the protocol every suite follows for one method on one
  input: warm up (keeping the first output and gradient for the accuracy checks, which the
  suite computes after timing), measure the peak memory of one warm forward+backward with
  :class:`~difflinalg.bench._memory.PeakMemory`, time the forward, time forward+backward. A
  stage that would not fit in what is left of the case's time budget is skipped and says
  so, instead of being killed half way.
* :class:`IsolatedRunner` - runs ``target(spec, report)`` in a fresh process (forked from a
  server that has imported torch once, so a case starts in milliseconds) under a timeout.
  Whatever the target reported before an exception, a timeout or a crash (an out-of-memory
  kill) is kept, and the failure comes back as a message, never as an exception.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.benchmark import Timer

from ._memory import PeakMemory, heap_for_memory, heap_for_timing

__all__ = ["Budget", "IsolatedRunner", "OtherLoad", "measure", "measure_interleaved",
           "profile_differentiable"]

Report = Callable[[dict[str, Any]], None]


class OtherLoad:
    """Share of the machine's CPU time used by *other* processes during a block (0 to 1).

    System-wide busy time (``/proc/stat``) minus this process's own CPU time (all its
    threads, ``/proc/self/stat``), over wall time times the number of CPUs. A benchmark
    sharing the machine with other work reads well above 0; then its timings are suspect.
    ``fraction`` is None where ``/proc`` cannot be read.
    """

    def __init__(self) -> None:
        self.fraction: float | None = None
        self._start: tuple[float, float, float] | None = None

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        try:
            with open("/proc/stat") as stat:
                fields = [float(v) for v in stat.readline().split()[1:]]
            with open("/proc/self/stat") as own:
                own_fields = own.read().rsplit(")", 1)[1].split()
        except (OSError, ValueError, IndexError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
        busy = sum(fields[:8]) - idle  # user nice system idle iowait irq softirq steal
        own_cpu = float(own_fields[11]) + float(own_fields[12])  # utime + stime
        return time.monotonic(), busy, own_cpu

    def __enter__(self) -> OtherLoad:
        self._start = self._sample()
        return self

    def __exit__(self, *exc: object) -> None:
        end = self._sample()
        if self._start is None or end is None:
            return
        wall = end[0] - self._start[0]
        ticks = os.sysconf("SC_CLK_TCK") * wall * (os.cpu_count() or 1)
        if ticks <= 0 or wall < 0.05:
            return
        other = (end[1] - self._start[1]) - (end[2] - self._start[2])
        self.fraction = min(max(other / ticks, 0.0), 1.0)


def measure(fn: Callable[[], object], *, min_run_time: float, num_threads: int
            ) -> dict[str, float | int | None]:
    """Median and spread of ``fn()`` from ``Timer.blocked_autorange``.

    Returns:
        ``{"median_s", "iqr_s", "blocks", "calls_per_block", "other_load"}``; ``blocks == 1``
        means a single measured block (slow call), whose ``iqr_s`` is 0; ``other_load`` is
        :class:`OtherLoad`'s fraction during the measurement (None if unknown).
    """
    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=num_threads)
    with OtherLoad() as load:
        m = timer.blocked_autorange(min_run_time=min_run_time)
    return {"median_s": float(m.median), "iqr_s": float(m.iqr), "blocks": len(m.raw_times),
            "calls_per_block": int(m.number_per_run),
            "other_load": None if load.fraction is None else round(load.fraction, 3)}


def measure_interleaved(fns: dict[str, Callable[[], object]], *, reference: str,
                        min_run_time: float, num_threads: int, rounds: int = 5
                        ) -> dict[str, dict[str, float | int | None]]:
    """Time several callables in one process, interleaved, and their speed ratios.

    On a shared machine the speed of a process drifts by tens of percent over seconds, so
    callables timed one after the other (or in different processes) are compared under
    different conditions. Here every round times each callable once with
    ``blocked_autorange(min_run_time / rounds)``, in turn; the ratio ``t(name) /
    t(reference)`` is formed within each round and its median over the rounds is reported,
    so drift slower than a round cancels.

    Returns ``{name: {"median_s", "ratio_to_reference", "ratio_iqr", "rounds",
    "other_load"}}``; ``ratio_to_reference`` is None for the reference itself.
    """
    per_round = max(min_run_time / rounds, 0.01)
    times: dict[str, list[float]] = {name: [] for name in fns}
    timers = {name: Timer(stmt="fn()", globals={"fn": fn}, num_threads=num_threads)
              for name, fn in fns.items()}
    with OtherLoad() as load:
        for _ in range(rounds):
            for name, timer in timers.items():
                times[name].append(float(timer.blocked_autorange(min_run_time=per_round).median))
    out: dict[str, dict[str, float | int | None]] = {}
    ref = times[reference]
    for name, values in times.items():
        ratios = sorted(v / r for v, r in zip(values, ref))
        q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
        out[name] = {
            "median_s": statistics.median(values), "rounds": rounds,
            "ratio_to_reference": None if name == reference else statistics.median(ratios),
            "ratio_iqr": None if name == reference else q[2] - q[0],
            "other_load": None if load.fraction is None else round(load.fraction, 3)}
    return out


class Budget:
    """Seconds left for one case; used only to decide whether a stage still fits."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._start = time.monotonic()

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self._start)

    def skip_reason(self, estimate: float) -> str | None:
        """None if a stage estimated to take ``estimate`` seconds fits, else why not."""
        left = self.left()
        if estimate <= left:
            return None
        return f"needs about {estimate:.0f} s, {max(left, 0.0):.0f} s left of the time budget"


def _timed_cost(call_seconds: float, min_run_time: float) -> float:
    """What ``blocked_autorange`` costs for a call of ``call_seconds`` (generous)."""
    return 2.0 * call_seconds + 2.5 * min_run_time


def profile_differentiable(forward: Callable[[torch.Tensor], torch.Tensor],
                           param: torch.Tensor, cotangent: torch.Tensor, *,
                           small_warmup: Callable[[], object] | None = None,
                           min_run_time: float, num_threads: int, memory: bool,
                           budget: Budget, report: Report
                           ) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor, float]:
    """Warm-up, peak memory, forward timing and forward+backward timing of one method.

    The loss is ``(forward(param) * cotangent).sum()`` and the backward is
    ``torch.autograd.grad`` w.r.t. ``param`` (a leaf with ``requires_grad``). The forward is
    timed with autograd recording, as in training.

    Stages: ``small_warmup()`` (the same method on a tiny input, to get one-off
    initialisation out of the way cheaply); the first full-size forward+backward, whose
    output and gradient are returned for the accuracy checks and whose wall time budgets the
    later stages (with glibc's heap set by :func:`~difflinalg.bench._memory.heap_for_memory`
    so that resident memory follows the live tensors); the peak extra memory of one more
    forward+backward, now warm - unless that
    call is slow (over 5% of the time budget), in which case the first call's peak is kept
    (``peak_memory_call: "first"``: after the small warm-up, one-off allocations add well
    under a MiB); then, with the heap back to its steady state
    (:func:`~difflinalg.bench._memory.heap_for_timing`), :func:`measure` of the forward and of
    forward+backward.

    Args:
        forward: the method, ``param -> output``; ``output`` has the shape of ``cotangent``.
        param: the leaf tensor the method is differentiated with respect to.
        cotangent: fixed incoming gradient of the output.
        small_warmup: optional cheap call of the same code on a small input.
        min_run_time: ``blocked_autorange`` minimum run time per measurement.
        num_threads: torch threads inside the timer.
        memory: measure the peak extra resident memory of forward+backward.
        budget: time left for the case; a stage that does not fit is skipped.
        report: called with partial results after each stage.

    Returns:
        ``(entry, output, grad, call_seconds)``: ``entry`` has ``fwd``, ``fwd_bwd`` (see
        :func:`measure`), ``peak_extra_bytes``, ``peak_memory_call`` and ``skipped``
        (stage -> reason); ``output`` and ``grad`` (detached) come from the first full-size
        call, ``call_seconds`` is its wall time, for budgeting later stages only.
    """
    entry: dict[str, Any] = {"skipped": {}}
    skipped = entry["skipped"]

    def fwd_bwd() -> torch.Tensor:
        (grad,) = torch.autograd.grad((forward(param) * cotangent).sum(), param)
        return grad

    report({"stage": "warm-up"})
    if memory:
        entry["heap"] = "precise" if heap_for_memory() else "default"
    if small_warmup is not None:
        small_warmup()
    with PeakMemory(enabled=memory) as first:
        t0 = time.monotonic()
        out = forward(param)
        t1 = time.monotonic()
        (grad,) = torch.autograd.grad((out * cotangent).sum(), param)
        t2 = time.monotonic()
    out = out.detach()
    fwd_seconds, call_seconds = t1 - t0, t2 - t0

    if memory:
        report({"stage": "peak memory"})
        peak, which = first, "first"
        if call_seconds <= 0.05 * budget.seconds and budget.skip_reason(call_seconds) is None:
            with PeakMemory() as warm:
                fwd_bwd()
            peak, which = warm, "warm"
        entry["peak_extra_bytes"] = peak.peak_extra_bytes
        entry["peak_memory_call"] = which
        if peak.peak_extra_bytes is None:
            skipped["memory"] = peak.reason
        report({"peak_extra_bytes": peak.peak_extra_bytes, "peak_memory_call": which})

    if memory:
        heap_for_timing()
    for stage, fn, seconds in (("fwd", lambda: forward(param), fwd_seconds),
                               ("fwd_bwd", fwd_bwd, call_seconds)):
        report({"stage": "forward timing" if stage == "fwd" else "forward+backward timing"})
        reason = budget.skip_reason(_timed_cost(seconds, min_run_time))
        if reason is None:
            entry[stage] = measure(fn, min_run_time=min_run_time, num_threads=num_threads)
        else:
            skipped[stage] = reason
        report({stage: entry.get(stage), "skipped": skipped})
    return entry, out, grad, call_seconds


def _describe_exception(exc: BaseException) -> str:
    """``Type: first line of the message`` (C++ errors append pages of context)."""
    lines = str(exc).strip().splitlines()
    first = lines[0] if lines else ""
    if len(first) > 300:
        first = first[:297] + "..."
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _child_main(target: Callable[[dict[str, Any], Report], None], spec: dict[str, Any],
                conn: Any) -> None:
    try:
        target(spec, conn.send)
    except BaseException as exc:  # noqa: BLE001 - every failure becomes a message
        conn.send({"__error__": _describe_exception(exc)})
    finally:
        conn.send({"__done__": True})
        conn.close()


def _exit_message(exitcode: int | None) -> str:
    if exitcode is None:
        return "worker did not exit"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (out of memory?)" if -exitcode == signal.SIGKILL else ""
        return f"worker killed by {name}{hint}"
    return f"worker exited with code {exitcode} before reporting"


class IsolatedRunner:
    """Run cases in fresh processes with a timeout; a failure is a message, not a crash.

    Processes are forked from a ``multiprocessing`` fork server that has imported
    ``preload`` once (spawned instead where fork servers do not exist). A case sees no state
    of earlier cases and its memory high-water mark is its own.

    Args:
        preload: modules the fork server imports up front (e.g. ``("torch", "difflinalg")``).
    """

    def __init__(self, preload: Sequence[str] = ("torch",)) -> None:
        if "forkserver" in multiprocessing.get_all_start_methods():
            self._ctx = multiprocessing.get_context("forkserver")
            self._ctx.set_forkserver_preload(list(preload))
        else:
            self._ctx = multiprocessing.get_context("spawn")

    def run(self, target: Callable[[dict[str, Any], Report], None], spec: dict[str, Any],
            timeout: float) -> tuple[dict[str, Any], str | None]:
        """Run ``target(spec, report)`` in a fresh process for at most ``timeout`` seconds.

        ``target`` must be a module-level function; ``report(dict)`` sends partial results,
        which are merged (later keys win) into the returned dict.

        Returns:
            ``(results, error)``: ``error`` is None on success, else the exception
            (``"Type: message"``), ``"timeout after N s"`` or how the process died.
        """
        receiver, sender = self._ctx.Pipe(duplex=False)
        proc = self._ctx.Process(target=_child_main, args=(target, spec, sender), daemon=True)
        proc.start()
        sender.close()
        deadline = time.monotonic() + timeout
        results: dict[str, Any] = {}
        error: str | None = None
        finished = False
        try:
            while not finished:
                left = deadline - time.monotonic()
                if left <= 0:
                    stage = results.get("stage")
                    error = f"timeout after {timeout:g} s" + (f" in {stage}" if stage else "")
                    break
                if not receiver.poll(min(left, 1.0)):
                    continue
                try:
                    message = receiver.recv()
                except (EOFError, OSError):
                    proc.join(5.0)
                    error = _exit_message(proc.exitcode)
                    break
                if "__error__" in message:
                    error = message["__error__"]
                elif "__done__" in message:
                    finished = True
                else:
                    results.update(message)
        finally:
            if proc.is_alive() and not finished:
                proc.kill()
            proc.join(10.0)
            receiver.close()
        return results, error
