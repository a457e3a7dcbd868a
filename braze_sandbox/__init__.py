"""Local stand-in for Braze's REST API, so the exporter can be built and load-tested offline."""
