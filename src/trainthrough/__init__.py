"""trainthrough: fault-tolerant parameter-server training (checkpoint, chain, stateless)."""

__version__ = "0.1.0"
