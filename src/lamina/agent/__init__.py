"""The endpoint agent: enrollment, files cache, sync, restore, staged apply at boot."""
