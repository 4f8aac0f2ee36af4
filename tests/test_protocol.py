"""The protocol as data: requests, validation, statuses."""

from __future__ import annotations

import pytest


def test_a_request_is_validated_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The builder validates; the client's own check then finds it done (no second or third pass)."""
    from flux_nb.protocol import FluxRequest

    calls: list[int] = []
    check = FluxRequest._check
    monkeypatch.setattr(FluxRequest, "_check", lambda self: calls.append(1) or check(self))
    request = FluxRequest("a fox", seed=1, width=64, height=64)
    assert request.validate() is request and request.validate() is request
    assert len(calls) == 1
    assert request == FluxRequest("a fox", seed=1, width=64, height=64)  # the mark is not a field
    changed = request.with_(seed=2)
    changed.validate()
    assert len(calls) == 2  # a changed copy is checked again
