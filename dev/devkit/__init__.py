"""Dev-only code: the ``agent-gateway dev`` launcher, the embedded servers and the fake runtimes.

Never shipped in the server's distribution; production code never imports it.
"""
