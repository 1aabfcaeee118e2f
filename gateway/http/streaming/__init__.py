"""Responses whose bodies are streamed: run downloads (copied, spliced, or spliced between chunk
headers), SSE, stored files, and the heap trimmed after a burst of them."""
