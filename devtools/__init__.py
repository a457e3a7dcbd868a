"""Developer tools: local services, sample segments and the demo. Not deployed."""
