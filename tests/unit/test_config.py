"""The config model: deterministic writing, a loader that names file, line
and the valid choices for every mistake, and the round trip."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pgo
from pgo import config as cfgmod
from pgo.config import Config, GCPlan, SiteRule, SizeClassRule

FULL = Config(
    profile="profiles/job-1", profile_started_at="2026-11-27T10:00:00+00:00", pgo="0.1.0",
    python="3.11.7", numpy="2.1.3", program="job.py", program_sha256="ab" * 32,
    gc=GCPlan(thresholds=(50000, 20, 100), freeze_after_startup=True, startup_s=0.75,
              full_collection="growth", growth_factor=2.0, peak_heap_blocks=6_086_835,
              profiled_gc_share=0.55, reason="GC took 55% of the run"),
    size_classes=(
        SizeClassRule(1 << 20, None, "cache", (("max_cached_bytes", 1 << 29),),
                      pattern="large-repeated", reason="48 MB temporaries", confidence=0.97),
        SizeClassRule(1, 128, "slab", (("block_size", 128),), pattern="fixed-size-churn"),
    ),
    sites=(SiteRule("mypkg.pipeline:normalize", "arena", (("chunk_size", 1 << 22),),
                    pattern="scoped-temporaries", confidence=0.93,
                    reason='98% of 12,400 arrays freed before "normalize" returns\n; sizes ok'),),
)


def test_round_trip_and_byte_identical_output(tmp_path):
    text = cfgmod.dumps(FULL)
    assert cfgmod.dumps(FULL) == text
    assert cfgmod.loads(text) == FULL
    cfgmod.write(FULL, tmp_path / "pgo.toml")
    assert cfgmod.load(tmp_path / "pgo.toml") == FULL
    assert (tmp_path / "pgo.toml").read_text() == text


def test_minimal_config():
    assert cfgmod.loads("[pgo]\nversion = 1\n") == Config()


def test_size_classes_build_a_router():
    from pgo.runtime import allocators
    router = allocators.router(FULL.size_classes)
    assert [type(sc.allocator).__name__ for sc in router.size_classes] == \
        ["SlabAllocator", "CacheAllocator"]


BAD = [
    ("[pgo]\nversion = 2\n", ":2: pgo.version: version 2 is not supported"),
    ("[gc]\nthresholds = [1, 2]\n", "the [pgo] table is required"),
    ("[pgo]\nversion = 1\nextra = 3\n", ":3: pgo.extra: unknown key 'extra'; valid keys: version"),
    ("[pgo]\nversion = 1\n[gc]\nthresholds = [1, 2]\n", ":4: gc.thresholds: expected three"),
    ("[pgo]\nversion = 1\n[gc]\nfull_collection = \"sometimes\"\n",
     ":4: gc.full_collection: unknown 'sometimes'; valid: default, growth"),
    ("[pgo]\nversion = 1\n[gc]\nfull_collection = \"growth\"\n", "growth_factor"),
    ("[pgo]\nversion = 1\n[gc]\ngrowth_factor = 0.5\n", "must be > 1"),
    ("[pgo]\nversion = 1\n[gc]\nfreeze_after_startup = 1\n", "expected bool, got int 1"),
    ("[pgo]\nversion = 1\n[gc]\npeak_heap_blocks = -5\n",
     ":4: gc.peak_heap_blocks: must be >= 0, got -5"),
    ("[pgo]\nversion = 1\n[gc]\npeak_heap_blocks = 1.5e6\n",
     ":4: gc.peak_heap_blocks: expected int, got float"),
    ("[pgo]\nversion = 1\n\n[[numpy.size_class]]\nmin_bytes = 0\nallocator = \"tcmalloc\"\n",
     ":6: numpy.size_class[0].allocator: unknown allocator 'tcmalloc'; valid: adaptive, arena, "
     "cache, compacting, hierarchical, linear, mapped, numa, slab, stack"),
    ("[pgo]\nversion = 1\n[[numpy.size_class]]\nmin_bytes = -1\nallocator = \"cache\"\n",
     "bad size range"),
    ("[pgo]\nversion = 1\n[[numpy.size_class]]\nmin_bytes = 10\nmax_bytes = 5\nallocator = \"cache\"\n",
     ":5: numpy.size_class[0].max_bytes: bad size range 10..5"),
    ("[pgo]\nversion = 1\n[[numpy.size_class]]\nmin_bytes = \"1 MiB\"\nallocator = \"cache\"\n",
     ":4: numpy.size_class[0].min_bytes: expected int, got str"),
    ("[pgo]\nversion = 1\n[[numpy.size_class]]\nmin_bytes = 1\nallocator = \"cache\"\nchunk_size = 4\n",
     "unknown key 'chunk_size'; valid keys: min_bytes, max_bytes, allocator, max_cached_bytes"),
    ("[pgo]\nversion = 1\n[[numpy.size_class]]\nallocator = \"cache\"\n", "min_bytes is required"),
    ("[pgo]\nversion = 1\n[[site]]\nfunction = \"job:work\"\nallocator = \"arena\"\n"
     "[[site]]\nfunction = \"nocolon\"\nallocator = \"arena\"\n",
     ":7: site[1].function: expected 'module:qualname'"),
    ("[pgo]\nversion = 1\n[[site]]\nfunction = \"a:b\"\nallocator = \"arena\"\npattern = \"x\"\n",
     "site[0].pattern: unknown 'x'; valid: lifo-scratch"),
    ("[pgo]\nversion = 1\n[[site]]\nfunction = \"a:b\"\nallocator = \"arena\"\nconfidence = 2\n",
     "must be in [0, 1]"),
    ("[pgo]\nversion = 1\n[[site]]\nfunction = \"a:b\"\nallocator = \"arena\"\nchunk_size = -4\n",
     "site[0].chunk_size: must be >= 1, got -4"),
    ("[pgo]\nversion = 1\n[[site]]\nfunction = \"a:b\"\nallocator = \"slab\"\n",
     ":3: site[0]: a slab [[site]] needs block_size"),
    ("[pgo]\nversion = 1\n[[numpy.size_class]]\nmin_bytes = 0\nallocator = \"slab\"\n",
     ":3: numpy.size_class[0]: a slab needs max_bytes or block_size"),
    ("[pgo]\nversion = 1\n[[numpy.size_class]]\nmin_bytes = 0\nmax_bytes = 100\n"
     "allocator = \"slab\"\nblock_size = 64\n",
     ":7: numpy.size_class[0].block_size: block_size 64 is smaller than max_bytes 100"),
    ("[pgo]\nversion = 1\n[[numpy.size_class]]\nmin_bytes = 0\nallocator = \"cache\"\n"
     "max_cached_bytes = 9223372036854775808\n",
     ":6: numpy.size_class[0].max_cached_bytes: must be at most 2**63 - 1"),
    ("[pgo]\nversion = 1\n[[numpy.size_class]]\nmin_bytes = 0\nallocator = \"linear\"\n"
     "capacity = 0\n", ":6: numpy.size_class[0].capacity: must be >= 1, got 0"),
    ("[pgo]\nversion = 1\n[gc\n", "<config>:3:4: not valid TOML"),
    ("[pgo]\nversion = 1\nsite = 3\n", "unknown key 'site'"),
    ("[pgo]\nversion = 1\n[numpy]\nsize_class = 3\n", "expected [[numpy.size_class]] tables"),
]


@pytest.mark.parametrize("text,message", BAD)
def test_errors_name_line_and_choices(text, message):
    with pytest.raises(pgo.ConfigError) as info:
        cfgmod.loads(text)
    assert message in str(info.value)
    assert str(info.value).startswith("<config>")


def test_load_names_the_file(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[pgo]\nversion = 1\n[[site]]\nfunction = \"a:b\"\nallocator = \"heap\"\n")
    with pytest.raises(pgo.ConfigError, match=rf"{p}:5: site\[0\].allocator"):
        cfgmod.load(p)
    with pytest.raises(pgo.ConfigError, match="no such config file"):
        cfgmod.load(tmp_path / "missing.toml")


names = st.from_regex(r"[a-z_][a-z0-9_]{0,8}(\.[a-z_][a-z0-9_]{0,8}){0,2}:[a-z_][a-z0-9_]{0,8}",
                      fullmatch=True)
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


@settings(max_examples=200, deadline=None)
@given(th=st.none() | st.tuples(*[st.integers(0, 10**9)] * 3), freeze=st.booleans(),
       growth=st.none() | st.floats(1.01, 100), peak=st.none() | st.integers(0, 1 << 40),
       reason=text,
       sites=st.lists(st.tuples(names, st.sampled_from(cfgmod.SITE_ALLOCATORS), text,
                                st.none() | st.floats(0, 1)), max_size=4),
       lo=st.integers(0, 1 << 40))
def test_round_trip_property(th, freeze, growth, peak, reason, sites, lo):
    cfg = Config(
        gc=GCPlan(thresholds=th, freeze_after_startup=freeze,
                  full_collection="growth" if growth else "default", growth_factor=growth,
                  peak_heap_blocks=peak, reason=reason),
        size_classes=(SizeClassRule(lo, lo + 5, "cache", reason=reason),),
        sites=tuple(SiteRule(fn, a, {"slab": (("block_size", 64),),
                                     "mapped": (("capacity", 4096),),
                                     "numa": (("capacity", 4096),)}.get(a, ()), reason=r,
                             confidence=c) for fn, a, r, c in sites))
    assert cfgmod.loads(cfgmod.dumps(cfg)) == cfg
