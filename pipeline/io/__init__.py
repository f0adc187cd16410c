"""Input/output: sources, storage, registry, metrics push."""
