"""A plugin module that fails while it is imported."""

raise RuntimeError("plugin module exploded on import")
