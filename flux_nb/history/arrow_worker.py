"""The Arrow reading process: runs history queries through the ADBC SQLite driver, answers in Arrow IPC.

Run as a script (``python -I arrow_worker.py``) by ``arrow_reader``; it imports nothing of flux_nb.
Each request is one JSON line ``{"target": ..., "queries": [[sql, params], ...], "out": prefix}``; the
queries run side by side, each on its own connection, and result i is written as an Arrow IPC file
``<prefix>-<i>.arrow`` (in shared memory where there is some: the caller maps it without a copy).
The answer is a JSON line: ``{"ok": true, "count": n}`` or ``{"ok": false, "error": "..."}``.
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import adbc_driver_sqlite.dbapi as adbc
import pyarrow as pa


def read(target: str, sql: str, params: list[Any], path: str) -> None:
    with adbc.connect(target) as connection, connection.cursor() as cursor:
        cursor.execute(sql, params or None)
        table = cursor.fetch_arrow_table()
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def answer(request: dict[str, Any], out: Any) -> None:
    queries = request["queries"]
    try:
        with ThreadPoolExecutor(max(1, len(queries))) as pool:
            paths = [f"{request['out']}-{i}.arrow" for i in range(len(queries))]
            list(pool.map(lambda q, path: read(request["target"], q[0], q[1], path), queries, paths))
    except Exception as exc:
        out.write(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"}).encode() + b"\n")
        out.flush()
        return
    out.write(json.dumps({"ok": True, "count": len(queries)}).encode() + b"\n")
    out.flush()


def main() -> None:
    out = sys.stdout.buffer
    for line in sys.stdin.buffer:
        answer(json.loads(line), out)


if __name__ == "__main__":
    main()
