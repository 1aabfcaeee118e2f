"""The HTTP edge: app factory, middleware, request parsing, schemas, handlers, OpenAPI, streaming.

The only package that imports ``aiohttp.web``.
"""
