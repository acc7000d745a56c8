"""/v1/pools: warm pools of started sandboxes, per image or template, sized at runtime."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from corral.core.pools import Pools, pool_key
from corral.errors import InvalidRequest, NotFound
from corral.server.schemas import Pool, PoolList, PoolSize
from corral.store.models import PoolRow

router = APIRouter(prefix="/v1/pools", tags=["pools"])


def _pools(request: Request) -> Pools:
    pools: Pools = request.app.state.pools
    return pools


def _pool(pools: Pools, row: PoolRow) -> Pool:
    return Pool(
        key=row.key,
        size=row.size,
        ready=len(pools.waiting(row.key)),
        hits=row.hits,
        misses=row.misses,
        error=pools.errors.get(row.key),
    )


@router.get("")
async def list_pools(request: Request) -> PoolList:
    pools = _pools(request)
    return PoolList(pools=[_pool(pools, row) for row in pools.store.list_pools()])


@router.put("/{key:path}")
async def set_pool(key: str, body: PoolSize, request: Request) -> Pool:
    """Keep ``size`` sandboxes of ``image:<name>`` or ``template:<name>`` started; fills in the background."""
    pools = _pools(request)
    return _pool(pools, pools.set_size(_canonical_key(key), body.size))


@router.delete("/{key:path}", status_code=204)
async def delete_pool(key: str, request: Request) -> Response:
    """Empty the pool (its waiting sandboxes are killed) and forget it."""
    pools = _pools(request)
    key = _canonical_key(key)
    if pools.store.get_pool(key) is None:
        raise NotFound(f"no pool '{key}' exists", details={"pool": key})
    pools.delete(key)
    return Response(status_code=204)


def _canonical_key(key: str) -> str:
    kind, _, name = key.partition(":")
    if kind == "image" and name:
        return pool_key(image=name)
    if kind == "template" and name:
        return pool_key(template=name)
    raise InvalidRequest(f"'{key}' is not a pool key: use image:<name> or template:<name>", details={"pool": key})
