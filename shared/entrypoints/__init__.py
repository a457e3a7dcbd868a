"""Entry points outside the Functions host's triggers: the CLI and the HTTP handlers."""
