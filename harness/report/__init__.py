"""Renderers: Recording (+ verdict) → str/bytes. They never write files; the CLI does."""
