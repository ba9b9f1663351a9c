"""``pgo demo --allocators``: the allocators at work on the patterns each is
made for (the demo of the library, beside the loop ``pgo demo`` runs)."""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time

import pgo
from pgo._sizes import fmt_bytes


class AllocatorTour:
    """Show pgo's allocators at work.

    Runs each allocator (stack, linear, arena, slab) on the allocation
    pattern it is made for, prints its statistics, then times
    ``allocator.empty(n)`` against ``np.empty(n)`` side by side (medians of
    several repetitions; the machine's noise applies).  Takes a few seconds.
    """

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--repeat", type=int, default=5, metavar="N",
            help="repetitions per timing; the median is shown (default: 5)",
        )
        parser.add_argument(
            "--quick", action="store_true",
            help="fewer iterations, for a smoke test",
        )

    def run(self, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
        if args.repeat < 1:
            parser.error("--repeat must be at least 1")
        out = sys.stdout
        scale = 0.1 if args.quick else 1.0
        print(f"pgo {pgo.__version__} demo: allocators over malloc'd memory, used from numpy\n", file=out)

        print("1. Each allocator on its own pattern", file=out)
        rows = []
        for title, run in _PATTERNS:
            allocator, description = run(max(1, int(2000 * scale)))
            rows.append((title, description, allocator.stats()))
        _print_stats(rows, out)

        print("\n2. Misuse is an error, not a crash", file=out)
        _show_misuse(out)

        print("\n3. allocator.empty(n) vs np.empty(n), float64, ns per call (median of "
              f"{args.repeat})", file=out)
        _print_timings(args.repeat, scale, out)
        print("\n4. Temporaries that are written: every 4 KiB page touched, then dropped, "
              "ns per array", file=out)
        _print_touched(args.repeat, scale, out)
        return 0


def _stack_pattern(n: int):
    stack = pgo.StackAllocator(1 << 20)
    for _ in range(n):
        with stack.frame():
            a = stack.empty(256)
            a[:] = 1.0
            with stack.frame():
                b = stack.empty(128)
                b[:] = a[:128] * 2
                del b
            del a
    return stack, "nested scratch frames (2 arrays per frame)"


def _linear_pattern(n: int):
    linear = pgo.LinearAllocator(4 << 20)
    for _ in range(max(1, n // 10)):
        batch = [linear.empty(512) for _ in range(10)]
        for arr in batch:
            arr.fill(3.0)
        del batch, arr
        linear.reset()
    return linear, "batches of 10 temporaries, then reset()"


def _arena_pattern(n: int):
    arena = pgo.ArenaAllocator(chunk_size=256 << 10)
    total = 0.0
    for _ in range(n):
        x = arena.empty(1024)
        x[:] = 0.5
        y = arena.zeros(1024)
        y += x
        total += float(y[0])
        del x, y
    return arena, "scoped temporaries; chunks reused when empty"


def _slab_pattern(n: int):
    slab = pgo.SlabAllocator(64 * 8)
    live = []
    for i in range(n * 4):
        live.append(slab.empty(64))
        if len(live) > 32:
            live.pop(i % 32)
    del live
    return slab, "fixed-size churn: 64 float64 arrays, 32 alive"


_PATTERNS = [
    ("StackAllocator", _stack_pattern),
    ("LinearAllocator", _linear_pattern),
    ("ArenaAllocator", _arena_pattern),
    ("SlabAllocator", _slab_pattern),
]


def _print_stats(rows, out) -> None:
    header = ("allocator", "allocs", "frees", "resets", "peak", "capacity", "frag", "live")
    print("   " + "  ".join(f"{h:>10}" if i else f"{h:<16}" for i, h in enumerate(header)), file=out)
    for title, description, st in rows:
        cells = [
            f"{title:<16}",
            f"{st['allocations']:>10,}",
            f"{st['frees']:>10,}",
            f"{st['resets']:>10,}",
            f"{fmt_bytes(st['peak']):>10}",
            f"{fmt_bytes(st['capacity']):>10}",
            f"{st['fragmentation']:>10.1%}",
            f"{st['live_blocks']:>10}",
        ]
        print("   " + "  ".join(cells), file=out)
        print(f"   {'':<16}  {description}", file=out)


def _show_misuse(out) -> None:
    slab = pgo.SlabAllocator(64)
    block = slab.alloc(64)
    slab.free(block)
    try:
        slab.free(block)
    except pgo.AllocatorError as e:
        print(f"   double free      -> AllocatorError: {e}", file=out)
    linear = pgo.LinearAllocator(1 << 16)
    arr = linear.empty(100)
    try:
        linear.reset()
    except pgo.AllocatorError as e:
        print(f"   reset while live -> AllocatorError: {e}", file=out)
    del arr
    linear.reset()
    stack = pgo.StackAllocator(1 << 16)
    first = stack.alloc(16)
    second = stack.alloc(16)
    try:
        stack.free(first)
    except pgo.AllocatorError as e:
        print(f"   out of LIFO free -> AllocatorError: {e}", file=out)
    stack.free(second)
    stack.free(first)


def _median_ns(fn, n: int, loops: int, repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        for _ in range(loops):
            fn(n)
        samples.append((time.perf_counter_ns() - t0) / loops)
    return statistics.median(samples)


def _print_touched(repeat: int, scale: float, out) -> None:
    import numpy as np
    print(f"   {'n':>11} {'np.empty':>12} {'arena.empty':>20}", file=out)
    for n in (1 << 20, 8 << 20):
        arena = pgo.ArenaAllocator(chunk_size=n * 8 + 4096)

        def touched(k, empty):
            a = empty(k)
            a[::512] = 1.0

        loops = max(2, int((40 if n <= 1 << 20 else 8) * scale))
        base = _median_ns(lambda k: touched(k, np.empty), n, loops, repeat)
        t = _median_ns(lambda k: touched(k, arena.empty), n, loops, repeat)
        print(f"   {n:>11,} {base:>12,.0f} {f'{t:,.0f} ({base / t:.1f}x)':>20}", file=out)
    print("   (numpy maps fresh memory for big arrays and faults every page in again;\n"
          "    the arena's chunk stays mapped, huge-page advised, and is reused)", file=out)


def _print_timings(repeat: int, scale: float, out) -> None:
    import numpy as np
    sizes = [16, 4096, 512 * 1024, 4 * 1024 * 1024]
    print(f"   {'n':>9} {'np.empty':>10} " + " ".join(f"{t[:-9]:>16}" for t, _ in _PATTERNS), file=out)
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for n in sizes:
            nbytes = n * 8
            allocators = [
                pgo.StackAllocator(nbytes + 4096),
                pgo.LinearAllocator(nbytes + 4096),
                pgo.ArenaAllocator(chunk_size=max(nbytes + 4096, 1 << 20)),
                pgo.SlabAllocator(nbytes),
            ]
            loops = max(5, int((20000 if n <= 4096 else 200) * scale))
            base = _median_ns(np.empty, n, loops, repeat)
            cells = []
            for allocator in allocators:
                if isinstance(allocator, pgo.LinearAllocator):
                    # No individual free: each array is dropped, then reset.
                    def fn(k, a=allocator):
                        a.empty(k)
                        a.reset()
                else:
                    fn = allocator.empty
                t = _median_ns(fn, n, loops, repeat)
                cells.append(f"{t:.0f} ({base / t:.2f}x)")
            print(f"   {n:>9,} {base:>10.0f} " + " ".join(f"{c:>16}" for c in cells), file=out)
    finally:
        if gc_was:
            gc.enable()
    print("   (x: speed relative to np.empty; > 1 is faster.  Allocation cost only: the memory\n"
          "    is not touched, so first-touch page faults of fresh memory are not counted.\n"
          "    Linear includes a reset() per array.)", file=out)
