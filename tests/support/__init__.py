"""Helpers the tests import (never fixtures: those live in the conftest.py files).

One module per subject: ``backends`` (the session's PostgreSQL and Redis), ``tokens`` (the
admin token and secret key test gateways run with), ``gateways`` and ``consumers`` (the types
of their factory fixtures), ``tenants`` (an organisation as a caller holds it), ``runtimes``
(agents on the fake n8n and what it received), ``runs`` (polling and reading runs),
``execute`` and ``packages`` (workflow execute and the /v0 API), ``processes`` and ``nginx`` (real
processes for end-to-end and resilience tests), ``live_gateways`` (gateways served as in
production), ``mocked_runtime`` (aioresponses for adapter tests), ``store_runs`` (runs made
straight in the store), ``prometheus`` (reading a /metrics page), and ``deployed``,
``deployed_tree``, ``deployed_runs`` and ``deployed_execute`` (the as-deployed check: the
manifests read as a cluster reads them, the image's containers, and the flows' calls).
"""
