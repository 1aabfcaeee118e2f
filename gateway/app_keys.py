"""Every typed ``web.AppKey`` the application stores, in one place."""

from __future__ import annotations

import aiohttp
import asyncpg
import redis.asyncio as aioredis
from aiohttp import web

from gateway.admin import AdminService
from gateway.background import BackgroundTasks
from gateway.callbacks import CallbackService
from gateway.health import Lifecycle
from gateway.metrics import GatewayMetrics
from gateway.ratelimit import RateLimiter
from gateway.runs import RunService
from gateway.settings import Settings
from gateway.triggers import TriggerService
from store.events import EventPublisher

SETTINGS = web.AppKey("settings", Settings)
DB_POOL = web.AppKey("db_pool", asyncpg.Pool)
REDIS = web.AppKey("redis", aioredis.Redis)
HTTP_SESSION = web.AppKey("http_session", aiohttp.ClientSession)
PUBLISHER = web.AppKey("publisher", EventPublisher)
RATE_LIMITER = web.AppKey("rate_limiter", RateLimiter)
BACKGROUND = web.AppKey("background", BackgroundTasks)
RUN_SERVICE = web.AppKey("run_service", RunService)
ADMIN_SERVICE = web.AppKey("admin_service", AdminService)
TRIGGER_SERVICE = web.AppKey("trigger_service", TriggerService)
CALLBACK_SERVICE = web.AppKey("callback_service", CallbackService)

REQUEST_ID = web.RequestKey("request_id", str)
# Set once a response has sent its headers: from then on an error cannot become a response.
PREPARED_RESPONSE = web.RequestKey("prepared_response", web.StreamResponse)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
METRICS = web.AppKey("metrics", GatewayMetrics)
