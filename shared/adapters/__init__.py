"""Adapters to the outside: settings, Blob/Queue/Table storage, the run and snapshot stores,
Key Vault, the Braze client and the shared rate governor, and the lazily built set of them."""
