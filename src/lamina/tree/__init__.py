"""File-system trees as content-addressed objects: scan, restore, diff."""
