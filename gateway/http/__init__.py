"""The HTTP edge: app factory, middleware, request parsing, request and response bodies,
handlers, OpenAPI, streaming.

The only package that imports ``aiohttp.web``.
"""
