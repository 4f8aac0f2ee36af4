"""The engine room under every front end: batches, the life of a request, backends, the loop, results."""
