"""Runtime adapters: one module per workflow runtime, behind one Protocol."""
