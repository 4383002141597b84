"""The bouncer's own SQLite store: waits, one file, schema versioned apart from the actors'."""
