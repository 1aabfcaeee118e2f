"""The admin token and secret key every test gateway is configured with."""

from __future__ import annotations

ADMIN_TOKEN = "test-admin-token"
# Strong enough for the start check (gateway/settings.py): like `openssl rand -hex 32`.
SECRET_KEY = "5f0c9e2a7d4b18e3c6a1f09b2d7e4c83a5b6f1e0d9c27a4b8e3f6d1c0a9b2e57"

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
