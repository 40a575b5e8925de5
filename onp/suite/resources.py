"""Wall time and peak memory of one benchmark cell.

Memory is measured in-process, two ways, and the table says which:

- ``peak_rss_mb``: the largest *increase* of the process's resident set size over its value at
  the start of the cell, sampled every :data:`SAMPLE_INTERVAL_S` seconds by a background thread
  reading ``/proc/self/statm`` (Linux). ``tracemalloc`` would miss tensor memory (torch does not
  allocate through Python's allocator), and ``ru_maxrss`` is a high-water mark of the whole
  process, which hides every cell after the largest one. Memory freed by an earlier cell and
  reused from the allocator's cache is not counted again, so this is a lower bound of what the
  cell needs on its own; a peak shorter than the interval can be missed.
- ``peak_cuda_mb``: ``torch.cuda.max_memory_allocated`` after resetting the peak at the start of
  the cell (exact), when the cell runs on a GPU; ``None`` otherwise.
"""

from __future__ import annotations

import os
import resource
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

SAMPLE_INTERVAL_S = 0.05
"""Seconds between two RSS samples."""
MIB = 1024 * 1024
_STATM = "/proc/self/statm"


def current_rss_bytes() -> int:
    """Resident set size of this process now (``ru_maxrss`` where ``/proc`` is missing)."""
    try:
        with open(_STATM) as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass
class Usage:
    """What :func:`measure` found (filled in when the ``with`` block ends).

    Attributes:
        wall_time_s: Seconds of wall-clock time.
        peak_rss_mb: Largest RSS increase over the start, MiB.
        peak_cuda_mb: Peak CUDA memory allocated, MiB, or ``None`` without a GPU.
    """

    wall_time_s: float = 0.0
    peak_rss_mb: float = 0.0
    peak_cuda_mb: float | None = None


@contextmanager
def measure(device: torch.device | None = None) -> Iterator[Usage]:
    """Time the block and record its peak memory in the :class:`Usage` it yields."""
    usage = Usage()
    start_rss = current_rss_bytes()
    peak = [start_rss]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(SAMPLE_INTERVAL_S):
            peak[0] = max(peak[0], current_rss_bytes())

    cuda = device is not None and device.type == "cuda" and torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    thread = threading.Thread(target=sample, name="rss-sampler", daemon=True)
    thread.start()
    start = time.perf_counter()
    try:
        yield usage
    finally:
        if cuda:
            torch.cuda.synchronize(device)
            usage.peak_cuda_mb = round(torch.cuda.max_memory_allocated(device) / MIB, 1)
        usage.wall_time_s = round(time.perf_counter() - start, 2)
        done.set()
        thread.join()
        peak[0] = max(peak[0], current_rss_bytes())
        usage.peak_rss_mb = round((peak[0] - start_rss) / MIB, 1)
