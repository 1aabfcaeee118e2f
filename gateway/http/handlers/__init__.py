"""Thin HTTP handlers: authenticate, parse, call a domain service, shape the response.

The shared steps live beside them: ``gateway.http.authentication``, ``gateway.http.path_ids``,
``gateway.http.rate_limits``, ``gateway.http.attachments`` and ``gateway.http.views``.
"""
