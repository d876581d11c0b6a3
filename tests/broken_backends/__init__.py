"""Broken third-party backends ``duro check`` must catch (see :mod:`.defects`); test-only."""
