# Rewritten by bench/cluster for a rolling upgrade; read once, at import.
VERSION = "v1"
