"""The Arrow reading process: runs history queries through the ADBC SQLite driver, answers in Arrow IPC.

Run as a script (``python -I arrow_worker.py``) by ``arrow_reader``; it imports nothing of flux_nb.
Each request is one JSON line ``{"target": ..., "queries": [[sql, params], ...]}``; the queries run
side by side, each on its own connection. The answer is a JSON line, ``{"ok": true, "count": n}``
followed by n Arrow IPC streams, or ``{"ok": false, "error": "..."}``.
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import adbc_driver_sqlite.dbapi as adbc
import pyarrow as pa


def read(target: str, sql: str, params: list[Any]) -> pa.Table:
    with adbc.connect(target) as connection, connection.cursor() as cursor:
        cursor.execute(sql, params or None)
        return cursor.fetch_arrow_table()


def answer(request: dict[str, Any], out: Any) -> None:
    queries = request["queries"]
    try:
        with ThreadPoolExecutor(max(1, len(queries))) as pool:
            tables = list(pool.map(lambda q: read(request["target"], q[0], q[1]), queries))
    except Exception as exc:
        out.write(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"}).encode() + b"\n")
        out.flush()
        return
    out.write(json.dumps({"ok": True, "count": len(tables)}).encode() + b"\n")
    for table in tables:
        with pa.ipc.new_stream(out, table.schema) as writer:
            writer.write_table(table)
    out.flush()


def main() -> None:
    out = sys.stdout.buffer
    for line in sys.stdin.buffer:
        answer(json.loads(line), out)


if __name__ == "__main__":
    main()
