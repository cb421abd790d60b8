"""Resource sampling of every process involved: the server tree, the drivers, the host."""
