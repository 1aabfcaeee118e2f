"""The Redis client type the store and the gateway speak to: one node, or a Redis Cluster."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

RedisClient = aioredis.Redis | RedisCluster
