"""The relay tables of CONVEYOR_ROUTE: every route arrives, in at most two hops, through few peers."""

import math

import pytest

from conveyor._hosts import virtual_blocks
from conveyor._relay import AUTO_GRID_RANKS, next_hops, route_mode


def host_groups(size, hosts):
    blocks = virtual_blocks(str(hosts), size)
    groups = {}
    for rank, block in enumerate(blocks):
        groups.setdefault(block, []).append(rank)
    return [tuple(g) for g in groups.values()]


LAYOUTS = [(p, h) for p in (1, 2, 3, 5, 7, 16, 17, 31, 64, 65, 100) for h in {1, 2, 3, p} if h <= p]


@pytest.mark.parametrize(("size", "hosts"), LAYOUTS)
@pytest.mark.parametrize("mode", ["host", "grid2d"])
def test_every_route_arrives_in_two_hops(mode, size, hosts):
    groups = host_groups(size, hosts)
    tables = [next_hops(mode, rank, groups) for rank in range(size)]
    for origin in range(size):
        for dest in range(size):
            if size == 1:
                assert tables[origin] == []
                continue
            first = tables[origin][dest]
            assert 0 <= first < size
            # The relay sends it straight on: two hops at most, no cycle.
            assert first == dest or tables[first][dest] == dest, (origin, dest, first)
        if size > 1:
            assert tables[origin][origin] == origin


@pytest.mark.parametrize("size", [16, 64, 100, 1024, 4096])
def test_grid_peers_grow_as_the_square_root(size):
    groups = host_groups(size, max(1, size // 16))  # 16 ranks a host
    for rank in (0, size // 2, size - 1):
        peers = set(next_hops("grid2d", rank, groups)) - {rank}
        assert len(peers) <= 2 * math.isqrt(size - 1) + 2, (rank, len(peers))


def test_host_routes_cross_hosts_once():
    groups = host_groups(12, 3)  # (0..3), (4..7), (8..11)
    hops = next_hops("host", 5, groups)  # place 1 on host 1
    assert hops[4:8] == [4, 5, 6, 7]  # its own host: straight
    assert hops[0:4] == [1, 1, 1, 1] and hops[8:12] == [9, 9, 9, 9]


def test_direct_has_no_table():
    assert next_hops("direct", 3, host_groups(8, 2)) == []


def test_route_mode():
    assert route_mode(4, "auto") == "direct"
    assert route_mode(AUTO_GRID_RANKS, "auto") == "grid2d"
    assert route_mode(4, " Grid2D ") == "grid2d" and route_mode(2, "host") == "host"
    with pytest.raises(ValueError, match="CONVEYOR_ROUTE='ring' is not one of direct, host"):
        route_mode(4, "ring")
