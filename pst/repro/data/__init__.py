"""Data sources: real (hub or local files) and synthetic, one record format per task family."""
