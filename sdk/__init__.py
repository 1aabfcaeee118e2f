"""The Python client SDK for the gateway's agent API."""
