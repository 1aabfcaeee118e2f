"""Process wiring: serving and draining, metrics, logging, and the store consumer's HTTP side."""
