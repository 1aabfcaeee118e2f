"""The admin token and secret key every test gateway is configured with."""

from __future__ import annotations

ADMIN_TOKEN = "test-admin-token"
SECRET_KEY = "test-secret-key"

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
