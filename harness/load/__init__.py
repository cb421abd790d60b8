"""The load side: load shapes, the protocol client, driver processes and their manager."""
