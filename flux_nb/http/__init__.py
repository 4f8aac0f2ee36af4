"""Talking to a FLUX.2 API over HTTP: submit, poll, download, one retry policy, the key's rules."""
