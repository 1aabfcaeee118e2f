"""Fake runtimes: real local HTTP servers that answer as n8n and Trigger.dev do."""
