"""fastapi-harness: boot a FastAPI app, drive load at it, watch it, name the first bottleneck."""

__version__ = "0.1.0"
