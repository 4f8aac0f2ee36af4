"""The durable history: SQLite records, content-addressed image files, the DataFrame view.

``HistoryStore`` is the whole interface (``store.view()`` gives a ``HistoryView``); storage faults
are ``HistoryError``. Importing the package does not import pandas: frames import it when built.
"""

from flux_nb.errors import HistoryError
from flux_nb.history.records import Record, RecordStatus, request_key
from flux_nb.history.store import HistoryStore

__all__ = ["HistoryError", "HistoryStore", "Record", "RecordStatus", "request_key"]
