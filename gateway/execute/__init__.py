"""Workflow execute: typed inputs, input files, and runs answered as JSON or Server-Sent Events."""
