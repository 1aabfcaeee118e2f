"""Thin HTTP handlers: authenticate, parse, call a domain service, shape the response.

The shared steps live beside them: ``gateway.http.access`` (authentication, the key guard's
step, the agents' token buckets), ``gateway.http.parsing`` (bodies, ids in paths),
``gateway.http.streaming`` (attachments, downloads, SSE) and ``gateway.http.views``.
"""
