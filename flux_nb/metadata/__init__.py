"""Provenance inside image files: what made an image travels with it.

``embed_provenance`` / ``save_with_provenance`` write a history record's request and outcome into a
PNG, JPEG or WebP copy without re-encoding its pixels; ``read_provenance`` and ``request_from_file``
read it back (``request_from_file`` also reads A1111-style ``parameters`` written by other tools;
``read_request`` also names what a file asked for beyond the request fields, which is never sent);
``pixel_hash`` checks that two files hold the same pixels. See ``provenance`` for what goes where.
"""

from flux_nb.metadata.provenance import (
    FORMAT,
    REQUEST_FIELDS,
    RESTORED_FIELDS,
    embed_provenance,
    grid_document,
    parameters_text,
    parse_parameters,
    pixel_hash,
    provenance,
    read_parameters,
    read_provenance,
    read_request,
    request_from_file,
    save_with_provenance,
    source_sha256,
    write_grid_provenance,
)

__all__ = [
    "FORMAT",
    "REQUEST_FIELDS",
    "RESTORED_FIELDS",
    "embed_provenance",
    "grid_document",
    "parameters_text",
    "parse_parameters",
    "pixel_hash",
    "provenance",
    "read_parameters",
    "read_provenance",
    "read_request",
    "request_from_file",
    "save_with_provenance",
    "source_sha256",
    "write_grid_provenance",
]
