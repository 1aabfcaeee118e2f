"""Reading what callers send: bounded JSON bodies, large ones parsed as they arrive, ids in
paths, and the marshmallow schemas of the run bodies."""
