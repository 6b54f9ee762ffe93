"""``vitopt run``: a YAML recipe chains load → compress → eval → export → build → bench."""
