"""A target that is not an ASGI application."""

app = {"this is": "a dict, not an app"}
