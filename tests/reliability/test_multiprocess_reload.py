"""Store versions across several serving processes (``--workers 2``, two
real processes behind one port): concurrent admin reloads never leave the
group split, and an answer that says ``serving 2 of 2`` is true."""

from __future__ import annotations

import asyncio
import shutil

import httpx

from influence.store import current_version

from ..service.util import REDIS_URL, publish_scaled
from .test_multiprocess import group


async def pinned_clients(base: str) -> dict[int, httpx.AsyncClient]:
    """One keep-alive client per serving process (slot -> client): new
    connections are opened until each process holds one."""
    out: dict[int, httpx.AsyncClient] = {}
    spare = []
    for _ in range(60):
        c = httpx.AsyncClient(base_url=base, timeout=120, limits=httpx.Limits(max_connections=1))
        slot = (await c.get("/readyz")).json()["process"]
        if slot in out:
            spare.append(c)
        else:
            out[slot] = c
        if len(out) == 2:
            break
    for c in spare:
        await c.aclose()
    assert sorted(out) == [0, 1], "the kernel never spread a connection to both processes"
    return out


def test_concurrent_reloads_never_split_the_group(built_store, prefix, tmp_path):
    """Two reloads to different versions sent at the same moment, one to
    each process, several rounds: afterwards every new connection reads one
    version, and each answer says 2 of 2 (none waits out its timeout).
    Before the group-wide reload turn a follower applied the other process's
    older reload after its own newer one: split until the next reload."""
    root = tmp_path / "store"
    shutil.copytree(built_store, root)
    versions = [current_version(root), publish_scaled(root, 2.0), publish_scaled(root, 4.0)]
    rounds = []
    with group(root, tmp_path / "var", REDIS_URL, prefix, tmp_path / "group.log", cache_ttl_s=0,
               request_timeout_s=20) as (base, _):
        async def scenario():
            clients = await pinned_clients(base)
            try:
                for r in range(6):
                    cur = (await clients[0].get("/readyz")).json()["store_version"]
                    a, b = [v for v in versions if v != cur][:: 1 if r % 2 else -1]
                    got = await asyncio.gather(clients[0].post("/v1/admin/reload", params={"version": a}),
                                               clients[1].post("/v1/admin/reload", params={"version": b}))
                    after = set()
                    for _ in range(12):  # new connections: either process
                        after.add(httpx.get(base + "/readyz", timeout=30).json()["store_version"])
                    rounds.append(([g.status_code for g in got], [g.json() for g in got], after))
            finally:
                for c in clients.values():
                    await c.aclose()

        asyncio.run(scenario())
    for codes, answers, after in rounds:
        assert codes == [200, 200], answers
        assert len(after) == 1, rounds  # one version behind the port
        assert all(a["processes"] == {"serving": 2, "total": 2} for a in answers), answers
        assert after <= {a["store_version"] for a in answers}, (answers, after)
