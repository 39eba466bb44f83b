"""Imported at start-up by the Python processes a test starts with ``tests.helpers.traceable()``.

SIGUSR1 makes such a process print, on its stderr, the stack of each of its threads, of each
task of its running asyncio loop and where each of its suspended coroutines waits: where a
process that should have moved on is stuck.
"""

import os
import signal
import sys
import threading
import traceback


def _print_stacks(signum, frame) -> None:
    out = sys.stderr
    print(f"--- stacks of process {os.getpid()}: {' '.join(sys.argv)[:200]}", file=out)
    names = {t.ident: t.name for t in threading.enumerate()}
    for ident, top in sys._current_frames().items():
        print(f"thread {names.get(ident, ident)}:", file=out)
        traceback.print_stack(top, file=out)
    try:
        import asyncio

        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if loop is not None:
        for task in asyncio.all_tasks(loop):
            print(f"task {task.get_name()}, awaiting (outermost first):", file=out)
            for where in _awaiting(task.get_coro()):
                print(f"  {where}", file=out)
    # A task's chain breaks at an object's __await__ (a Server awaited, say): every suspended
    # coroutine of the process, each with where it waits, fills that in.
    import gc
    import types

    suspended = [o for o in gc.get_objects() if isinstance(o, types.CoroutineType) and o.cr_frame is not None]
    print(f"suspended coroutines ({len(suspended)}):", file=out)
    for coro in suspended[:150]:
        frame = coro.cr_frame
        print(f"  {frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_qualname}", file=out)
    print(f"--- end of the stacks of process {os.getpid()}", file=out, flush=True)


def _awaiting(coro):
    """Each frame down a coroutine's chain of awaits, as 'file:line in function'."""
    seen = 0
    while coro is not None and seen < 40:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            yield f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}"
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
        seen += 1


signal.signal(signal.SIGUSR1, _print_stacks)
