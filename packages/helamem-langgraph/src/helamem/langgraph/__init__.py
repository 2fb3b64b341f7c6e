"""HeLa-Mem adapter (in progress)."""
