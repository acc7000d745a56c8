"""Warm pools on a corral server: ``Pools`` (sync) and ``AsyncPools``.

A pool keeps sandboxes of one image or template started ahead; a matching
``Sandbox.create()`` is handed one at once and the pool refills behind it.
Its key is ``image:<name>`` or ``template:<name>``::

    from corral import Pools
    with Pools() as pools:                     # CORRAL_URL / CORRAL_API_KEY or arguments
        pools.set("image:corral/base", 2)
        for pool in pools.list():
            print(pool.key, pool.ready, pool.hits, pool.misses)
"""

from __future__ import annotations

import builtins

from corral.sdk import _routes as routes
from corral.sdk._base import AsyncClient, SyncClient
from corral.sdk.models import PoolInfo

__all__ = ["AsyncPools", "Pools"]


class Pools(SyncClient):
    """The warm pools of one server. ``close()`` (or leaving the ``with``) frees the connection."""

    def list(self) -> builtins.list[PoolInfo]:
        """Every pool, with how many sandboxes wait in it and its hits and misses."""
        return self._http.call(routes.list_pools())

    def set(self, key: str, size: int) -> PoolInfo:
        """Keep ``size`` sandboxes of ``key`` started; the pool is made if need be, and 0 empties it."""
        return self._http.call(routes.set_pool(key, size))

    def delete(self, key: str) -> None:
        """Kill the sandboxes waiting in it and forget it."""
        self._http.call(routes.delete_pool(key))


class AsyncPools(AsyncClient):
    """The async twin of :class:`Pools`."""

    async def list(self) -> builtins.list[PoolInfo]:
        return await self._http.call(routes.list_pools())

    async def set(self, key: str, size: int) -> PoolInfo:
        return await self._http.call(routes.set_pool(key, size))

    async def delete(self, key: str) -> None:
        await self._http.call(routes.delete_pool(key))
