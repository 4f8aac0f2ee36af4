"""Which process owns a record, and whether that process still runs (the rule lives in ``flux_nb.owners``)."""

from __future__ import annotations

from flux_nb.owners import may_take_over, owner_is_gone, process_owner

__all__ = ["may_take_over", "owner_is_gone", "process_owner"]
