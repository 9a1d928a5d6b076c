"""Run one function over many cases, in worker processes when that helps, with a tqdm progress bar."""
from __future__ import annotations

import multiprocessing
from typing import Any, Callable, List, Sequence

from tqdm import tqdm


def _call(job):
    fn, item = job
    return fn(item)


def run_parallel(fn: Callable[[Any], Any], items: Sequence[Any], num_processes: int = 2,
                 desc: str = "converting", min_items_per_process: int = 4) -> List[Any]:
    """Return ``[fn(item) for item in items]`` (in order), showing a progress bar.

    ``fn`` must be a module-level function (it is pickled for the workers). Worker processes use the
    ``spawn`` start method (safe when torch or other threaded libraries are loaded); they are only
    started when there are at least ``min_items_per_process`` items per extra process, because a
    spawned worker costs a fraction of a second to start. An exception raised by ``fn`` (in a worker
    too) reaches the caller as the same type.

    The bar is drawn only on a terminal (not into log files or pipes), and is removed when ``fn``
    fails, so that the error message is the last (and only) thing on stderr.
    """
    items = list(items)
    n = max(1, min(int(num_processes or 1), len(items) // max(1, min_items_per_process)))
    bar = tqdm(total=len(items), desc=desc, unit="case", disable=None)
    out: List[Any] = []
    try:
        if n <= 1:
            for i in items:
                out.append(fn(i))
                bar.update()
        else:
            ctx = multiprocessing.get_context("spawn")
            chunk = max(1, len(items) // (n * 8))
            with ctx.Pool(n) as pool:
                for r in pool.imap(_call, [(fn, i) for i in items], chunksize=chunk):
                    out.append(r)
                    bar.update()
    except BaseException:
        bar.leave = False
        bar.close()
        raise
    bar.close()
    return out
