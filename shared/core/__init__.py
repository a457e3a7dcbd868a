"""The pure core: definitions, validation, the run model, fingerprints, partitioning, Braze
objects, report building and source readers. No Azure, no HTTP, no I/O of its own."""
