"""A real FastAPI app with one endpoint per classic bottleneck, plus a healthy baseline."""
