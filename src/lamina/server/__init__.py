"""The Lamina server: API, tasks, auth (the console joins later)."""
