"""Big allocator buffers ask the kernel for transparent huge pages, as numpy's
default handler does for its own big arrays (DESIGN.md: without it, 48 MB
temporaries ran 3.1x slower with 23x the page faults)."""

import pathlib
import subprocess
import sys
import textwrap

import pytest

import pgo

THP = pathlib.Path("/sys/kernel/mm/transparent_hugepage/enabled")


def thp_mode():
    try:
        text = THP.read_text()
    except OSError:
        return None
    return text[text.index("[") + 1:text.index("]")]


def vma_fields(address):
    """The /proc/self/smaps fields of the mapping that holds `address`."""
    fields, inside = {}, False
    for line in pathlib.Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and all(c in "0123456789abcdef-" for c in head):
            lo, hi = (int(x, 16) for x in head.split("-"))
            if inside:
                break
            inside = lo <= address < hi
        elif inside:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


needs_thp = pytest.mark.skipif(thp_mode() not in ("always", "madvise"),
                               reason="transparent huge pages are off on this machine")


@needs_thp
@pytest.mark.parametrize("make", [
    lambda: pgo.LinearAllocator(8 << 20),
    lambda: pgo.StackAllocator(8 << 20),
    lambda: pgo.ArenaAllocator(chunk_size=8 << 20),
    lambda: pgo.SlabAllocator(1 << 20, slots_per_slab=8),
], ids=["linear", "stack", "arena", "slab"])
def test_big_buffers_are_huge_page_eligible(make):
    a = make()
    block = a.alloc(1024)
    # "hg" in VmFlags: the mapping was advised MADV_HUGEPAGE, which is what
    # pgo controls.  (THPeligible also depends on the kernel's state at the
    # moment, outside pgo: it read 0 once in ~10 CI runs of the test build.)
    assert "hg" in vma_fields(block.address).get("VmFlags", "").split()


@needs_thp
def test_big_buffer_starts_on_a_huge_page_boundary():
    a = pgo.LinearAllocator(8 << 20)
    assert a.alloc(1, align=1).address % (2 << 20) == 0


@pytest.mark.skipif(thp_mode() != "madvise", reason="only under THP 'madvise' is the difference ours")
def test_small_buffers_are_left_alone(tmp_path):
    # In a fresh process: in this one, numpy's handler may have advised a
    # range of the heap for an earlier test's big array, and a small buffer
    # malloc'd there later would read as eligible through no doing of pgo.
    code = textwrap.dedent("""
        import pathlib, sys
        sys.path.insert(0, sys.argv[1])
        from test_hugepages import vma_fields
        import pgo
        a = pgo.LinearAllocator(1 << 20)
        print(vma_fields(a.alloc(16).address).get("THPeligible"))
    """)
    # Run outside the checkout: a checkout's pgo/ (no compiled core) must
    # not shadow the installed one.
    out = subprocess.run([sys.executable, "-c", code, str(pathlib.Path(__file__).parent)],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() != "1"
