"""Every typed ``web.AppKey`` the application stores, in one place."""

from __future__ import annotations

import aiohttp
import asyncpg
from aiohttp import web

from gateway.admin.service import AdminService
from gateway.background import BackgroundTasks
from gateway.execute.frames import ExecutionFeeds
from gateway.execute.input_files import FileService
from gateway.execute.large_bodies import LargeBodySlots
from gateway.execute.service import ExecuteService
from gateway.ops.dependencies import DependencyMonitor
from gateway.ops.drain import Lifecycle
from gateway.ops.metrics import GatewayMetrics
from gateway.ops.tracing import Tracing
from gateway.packages.service import PackageService
from gateway.runs.callbacks import CallbackService
from gateway.runs.creation import RunCreation
from gateway.runs.downloads import DownloadService
from gateway.runs.external import ExternalRunService
from gateway.runs.lookups import RunLookups
from gateway.runs.realtime import RealtimeFollower
from gateway.runs.recording import RunRecorder, RunTransitions
from gateway.runs.triggers import TriggerService
from gateway.runs.waits import RunWaiters
from gateway.security.credentials import CredentialService
from gateway.security.key_guard import KeyGuard
from gateway.security.ratelimit import RateLimiter
from gateway.security.tokens import CredentialsTokens
from gateway.settings import Settings
from gateway.storage.blobs import BlobStore
from store.lookup_cache import LookupCache
from store.redis_client import RedisClient

SETTINGS = web.AppKey("settings", Settings)
DB_POOL = web.AppKey("db_pool", asyncpg.Pool)
REDIS: web.AppKey[RedisClient] = web.AppKey("redis")
LOOKUP_CACHE = web.AppKey("lookup_cache", LookupCache)
HTTP_SESSION = web.AppKey("http_session", aiohttp.ClientSession)
# The process's tracing (gateway/ops/tracing.py) when the OTEL_* variables turn it on, else None.
TRACING = web.AppKey[Tracing | None]("tracing")
RECORDER = web.AppKey("recorder", RunRecorder)
RATE_LIMITER = web.AppKey("rate_limiter", RateLimiter)
BACKGROUND = web.AppKey("background", BackgroundTasks)
RUN_LOOKUPS = web.AppKey("run_lookups", RunLookups)
RUN_CREATION = web.AppKey("run_creation", RunCreation)
RUN_TRANSITIONS = web.AppKey("run_transitions", RunTransitions)
ADMIN_SERVICE = web.AppKey("admin_service", AdminService)
TRIGGER_SERVICE = web.AppKey("trigger_service", TriggerService)
DOWNLOAD_SERVICE = web.AppKey("download_service", DownloadService)
CALLBACK_SERVICE = web.AppKey("callback_service", CallbackService)
EXTERNAL_RUN_SERVICE = web.AppKey("external_run_service", ExternalRunService)
CREDENTIAL_SERVICE = web.AppKey("credential_service", CredentialService)
RUN_WAITERS = web.AppKey("run_waiters", RunWaiters)
REALTIME_FOLLOWER = web.AppKey("realtime_follower", RealtimeFollower)
"""Only set when Trigger.dev runs are followed in real time (TRIGGER_DEV_REALTIME)."""
BLOB_STORE = web.AppKey[BlobStore]("blob_store")
FILE_SERVICE = web.AppKey("file_service", FileService)
EXECUTE_SERVICE = web.AppKey("execute_service", ExecuteService)
EXECUTION_FEEDS = web.AppKey("execution_feeds", ExecutionFeeds)
LARGE_BODY_SLOTS = web.AppKey("large_body_slots", LargeBodySlots)
KEY_GUARD = web.AppKey("key_guard", KeyGuard)
CREDENTIALS_TOKENS = web.AppKey("credentials_tokens", CredentialsTokens)
PACKAGE_SERVICE = web.AppKey("package_service", PackageService)

REQUEST_ID = web.RequestKey("request_id", str)
# Set once a response has sent its headers: from then on an error cannot become a response.
PREPARED_RESPONSE = web.RequestKey("prepared_response", web.StreamResponse)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
DEPENDENCIES = web.AppKey("dependencies", DependencyMonitor)
METRICS = web.AppKey("metrics", GatewayMetrics)
