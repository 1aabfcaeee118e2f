"""Operator actions on organisations, keys, users, agents and credentials."""
