"""The durable history: SQLite records, content-addressed image files, the DataFrame view."""
