"""``Router.from_config`` (RELIABILITY 22): ``[[numpy.size_class]]`` tables
given as Python data are checked by the config reader (pgo.config) and
made into allocators by the runtime (pgo.runtime.allocators), which hands
its reader to the C class (``_core`` knows no config format)."""

import numpy as np
import pytest

import pgo
from pgo._core import numpy_bridge
from pgo.runtime import allocators  # noqa: F401  (gives Router.from_config its reader)
from pgo._sizes import MiB


def test_pgo_router_is_the_c_router_with_the_config_reader():
    assert pgo.Router is numpy_bridge.Router
    router = numpy_bridge.Router.from_config([{"min_bytes": 0, "allocator": "cache"}])
    assert type(router) is numpy_bridge.Router


def test_from_config_keeps_a_subclass():
    class Mine(pgo.Router):
        pass

    assert type(Mine.from_config([])) is Mine


# -- Router.from_config (RELIABILITY 22) -------------------------------------------------------

def test_from_config_builds_the_allocators():
    entries = [
        {"min_bytes": 0, "max_bytes": 64, "allocator": "slab"},
        {"min_bytes": 65, "max_bytes": 512, "allocator": "slab", "block_size": 512,
         "slots_per_slab": 32},
        {"min_bytes": 1024, "max_bytes": 65535, "allocator": "arena", "chunk_size": 1 << 18,
         "limit_bytes": 4 * MiB},
        {"min_bytes": 65536, "max_bytes": 1 << 18, "allocator": "linear", "capacity": 4 * MiB},
        {"min_bytes": (1 << 18) + 1, "max_bytes": MiB, "allocator": "stack", "capacity": 4 * MiB},
        {"min_bytes": MiB + 1, "allocator": "cache", "max_cached_bytes": 64 * MiB,
         "hugepages": False, "prefault": True},
    ]
    router = pgo.Router.from_config(entries, source="job.toml", name="from-config")
    assert isinstance(router, pgo.Router) and router.name == "from-config"
    a = [sc.allocator for sc in router.size_classes]
    assert [type(x) for x in a] == [pgo.SlabAllocator, pgo.SlabAllocator, pgo.ArenaAllocator,
                                    pgo.LinearAllocator, pgo.StackAllocator, pgo.CacheAllocator]
    assert [(sc.min_bytes, sc.max_bytes) for sc in router.size_classes] == [
        (e["min_bytes"], e.get("max_bytes")) for e in entries]
    assert a[0].block_size == 64 and a[0].align >= 16
    assert a[1].block_size == 512
    assert a[2].stats()["chunk_size"] == 1 << 18 and a[2].stats()["max_bytes"] == 4 * MiB
    assert a[3].capacity == 4 * MiB and a[4].capacity == 4 * MiB
    assert a[5].max_cached_bytes == 64 * MiB and "hugepages=False" in repr(a[5])
    assert all(x.threadsafe for x in a)
    with pgo.use(router):
        xs = [np.ones(n // 8 + 1) for n in (8, 300, 5000, 100000, 500000, 2 * MiB)]
    assert [pgo.owner(x) for x in xs] == a
    del xs
    assert all(x.live_blocks == 0 for x in a)


def test_from_config_defaults_and_small_slab():
    router = pgo.Router.from_config([{"min_bytes": 0, "max_bytes": 8, "allocator": "slab"},
                                     {"min_bytes": 9, "allocator": "cache"}])
    slab, cache = (sc.allocator for sc in router.size_classes)
    assert slab.block_size == 8 and slab.align == 16
    assert cache.max_cached_bytes == 512 * MiB
    assert router.name == "pgo"
    with pgo.use(router):
        x = np.ones(1)
    assert pgo.owner(x) is slab


@pytest.mark.parametrize("entry,pattern", [
    ({"min_bytes": 0, "allocator": "jemalloc"},
     r"allocator: unknown allocator 'jemalloc'; valid: adaptive, arena, cache, compacting, "
     r"hierarchical, linear, mapped, numa, slab, stack"),
    ({"min_bytes": 0}, r"allocator is required"),
    ({"min_bytes": 0, "allocator": "cache", "chunk_size": 5},
     r"chunk_size: unknown key 'chunk_size'; valid keys: .*max_cached_bytes"),
    ({"min_bytes": 0, "allocator": "arena", "chunksize": 5}, r"unknown key 'chunksize'"),
    ({"allocator": "cache"}, r"min_bytes is required"),
    ({"min_bytes": "0", "allocator": "cache"}, r"min_bytes: expected int, got str"),
    ({"min_bytes": 1.0, "allocator": "cache"}, r"min_bytes: expected int, got float"),
    ({"min_bytes": True, "allocator": "cache"}, r"min_bytes: expected int, got bool"),
    ({"min_bytes": 0, "max_bytes": False, "allocator": "cache"}, r"max_bytes: expected int, got bool"),
    ({"min_bytes": -1, "allocator": "cache"}, r"min_bytes: bad size range -1..None"),
    ({"min_bytes": 100, "max_bytes": 99, "allocator": "cache"}, r"max_bytes: bad size range 100..99"),
    ({"min_bytes": 0, "allocator": "arena", "chunk_size": 0}, r"chunk_size: must be >= 1, got 0"),
    ({"min_bytes": 0, "allocator": "arena", "chunk_size": -4096}, r"chunk_size: must be >= 1, got -4096"),
    ({"min_bytes": 0, "allocator": "arena", "limit_bytes": -1}, r"limit_bytes: must be >= 0, got -1"),
    ({"min_bytes": 0, "allocator": "stack", "capacity": True}, r"capacity: expected int, got bool"),
    ({"min_bytes": 0, "allocator": "linear", "capacity": "1M"}, r"capacity: expected int, got str"),
    ({"min_bytes": 0, "allocator": "cache", "hugepages": 1}, r"hugepages: expected bool, got int"),
    ({"min_bytes": 0, "allocator": "cache", "prefault": "yes"}, r"prefault: expected bool, got str"),
    ({"min_bytes": 0, "allocator": "cache", "max_cached_bytes": -1},
     r"max_cached_bytes: must be >= 0, got -1"),
    ({"min_bytes": 0, "allocator": "slab"}, r"slab needs max_bytes or block_size"),
    ({"min_bytes": 0, "max_bytes": 100, "allocator": "slab", "block_size": 64},
     r"block_size 64 is smaller than max_bytes 100"),
    ({"min_bytes": 0, "allocator": "stack", "capacity": 1 << 62}, r"\]: cannot make the stack allocator"),
])
def test_from_config_errors_name_source_and_entry(entry, pattern):
    entries = [{"min_bytes": 1 << 30, "allocator": "cache"}, entry]
    with pytest.raises(pgo.ConfigError, match=pattern) as e:
        pgo.Router.from_config(entries, source="job.toml")
    assert str(e.value).startswith("job.toml: numpy.size_class[1]")


@pytest.mark.parametrize("entry", [
    {"min_bytes": 1 << 64, "allocator": "cache"},
    {"min_bytes": 0, "max_bytes": 1 << 64, "allocator": "cache"},
    {"min_bytes": 0, "allocator": "arena", "chunk_size": 1 << 64},
    {"min_bytes": 0, "allocator": "cache", "max_cached_bytes": 1 << 64},
    {"min_bytes": 0, "max_bytes": 64, "allocator": "slab", "slots_per_slab": 1 << 64},
])
def test_from_config_sizes_too_big_for_the_machine_are_config_errors(entry):
    # A size that does not fit in 64 bits is a bad size like any other, and
    # a config error must say so (with the source), not raise OverflowError.
    with pytest.raises(pgo.ConfigError, match="job.toml"):
        pgo.Router.from_config([entry], source="job.toml")


def test_from_config_whole_table_errors():
    with pytest.raises(pgo.ConfigError, match=r"job.toml: numpy.size_class: expected \[\[numpy.size_class\]\] tables, got dict"):
        pgo.Router.from_config({"min_bytes": 0}, source="job.toml")
    with pytest.raises(pgo.ConfigError, match=r"job.toml: numpy.size_class\[0\]: expected a table, got list"):
        pgo.Router.from_config([["min_bytes", 0]], source="job.toml")
    with pytest.raises(pgo.ConfigError, match=r"job.toml: numpy.size_class: .*overlap"):
        pgo.Router.from_config([{"min_bytes": 0, "max_bytes": 100, "allocator": "cache"},
                                {"min_bytes": 50, "allocator": "arena"}], source="job.toml")
    with pytest.raises(pgo.ConfigError, match=r"job.toml: numpy.size_class: .*at most 16"):
        pgo.Router.from_config([{"min_bytes": 10 * i, "max_bytes": 10 * i + 9,
                                 "allocator": "cache"} for i in range(17)], source="job.toml")
    with pytest.raises(pgo.ConfigError, match="job.toml"):
        pgo.Router.from_config([{"min_bytes": 0, "allocator": "slab", "block_size": 64}],
                               source="job.toml")
    with pytest.raises(pgo.ConfigError, match="name"):
        pgo.Router.from_config([], source="job.toml", name="")
    assert isinstance(pgo.Router.from_config([]), pgo.Router)
