"""``Flux``: the session behind the magic, the panel and the Python API.

It holds the defaults (as traitlets, so ``%config Flux.budget = 20`` works), picks the
backend, validates and prices every request before anything is sent, records each one
in the history before sending it, and runs batches concurrently on a private loop.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

from traitlets import observe

from flux_nb import protocol
from flux_nb.core import batch as batches
from flux_nb.core import spending
from flux_nb.core.axes import Axis
from flux_nb.core.backend import Backend, connect, resolve_backend
from flux_nb.core.batch import Defaults, PreparedRequest, draw_seed
from flux_nb.core.events import BatchObserver, Emit, ignore
from flux_nb.core.in_flight import Ledger
from flux_nb.core.jobs import Executor
from flux_nb.core.loop import LoopRunner
from flux_nb.core.notebooks import notebook_name
from flux_nb.core.outcomes import cache_hit, prepared_from_record
from flux_nb.core.results import Result, SweepResult, presenter
from flux_nb.core.resuming import Resumed
from flux_nb.core.watching import guarded, relay
from flux_nb.errors import ValidationError
from flux_nb.experiments import Experiments, bundle_folder
from flux_nb.history.store import HistoryStore, Record, process_owner
from flux_nb.http.auth import Secret
from flux_nb.http.client import AsyncFluxClient
from flux_nb.http.probe import ProbePolicy, ReferenceSizes
from flux_nb.http.read_limits import BodyLimits
from flux_nb.http.slots import SharedSlots
from flux_nb.images import ImageInput
from flux_nb.recovery import Recovery
from flux_nb.settings import FluxSettings

if TYPE_CHECKING:
    import httpx
    import pandas as pd

    from flux_nb.core.templates import PromptTemplate

#: Upper bounds of settings that have one (a thumbnail is a preview; more than 4096 px is no thumbnail).

#: The key for a non-BFL endpoint (a local server started with keys, a gateway).
ENDPOINT_KEY_ENV = "FLUX_NB_API_KEY"


class Flux(FluxSettings):
    """A FLUX.2 session: defaults, backend, history, budget.

    Its settings are traits declared on ``FluxSettings`` (so ``%config Flux.x`` and config files reach them);
    its parts on the history, ``Recovery`` and ``Experiments``, are built on the current store when used.

    >>> flux = Flux()                                  # doctest: +SKIP
    >>> flux.generate("a lighthouse at dusk", seed=42)  # doctest: +SKIP
    """

    def __init__(
        self,
        endpoint: str | None = None,
        api_key: str | None = None,
        history_dir: str | os.PathLike[str] | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        **kwargs: Any,
    ) -> None:
        if api_key is None and os.environ.get(ENDPOINT_KEY_ENV):
            api_key = os.environ[ENDPOINT_KEY_ENV]
        # BFL_API_KEY is a BFL key: it goes to BFL hosts only. A key for another endpoint is given
        # explicitly (api_key=, %flux login) or in FLUX_NB_API_KEY.
        self._key_given = api_key is not None
        self._api_key = Secret.of(api_key if api_key is not None else os.environ.get(protocol.KEY_ENV) or None)
        #: An httpx transport for every request (tests: ``httpx.ASGITransport(create_app())``).
        self._transport = transport
        self._runner = LoopRunner()
        self._executor: Executor | None = None
        self._backend: Backend | None = None
        self._store: HistoryStore | None = None
        self._spent = 0.0
        self._balance: float | None = None  # the last balance the API gave, less what was spent here since
        self._url_sizes: dict[ProbePolicy, ReferenceSizes] = {}
        self._ledger = Ledger()  # records in flight here; writes a full disk refused, made at the next chance
        self._listeners: list[Callable[[], None]] = []
        #: Makes the observer ``sweep`` reports to (the magic installs a live display).
        self.observer_factory: Callable[[], BatchObserver] | None = None
        #: Tells the notebook's name (front ends install a better one, e.g. from the kernel's namespace).
        self.notebook_detector: Callable[[], str] = notebook_name
        super().__init__(**kwargs)
        if endpoint is not None:
            self.endpoint = endpoint
        if history_dir is not None:
            self.history_dir = os.fspath(history_dir)

    def __repr__(self) -> str:
        where = self._backend.base_url if self._backend and self._backend.connected else (self.endpoint or "auto")
        key = "set" if self._api_key else "none"
        return f"Flux(endpoint={where!r}, model={self.model!r}, history_dir={self.history_dir!r}, key={key})"

    # -- configuration changes drop what depended on them --------------------------------------

    @observe(
        "endpoint",
        "region",
        "billed",
        "max_concurrency",
        "task_timeout",
        "download_stall",
        "share_slots",
        "slots_say_after",
    )
    def _connection_changed(self, change: dict[str, Any]) -> None:
        self._reset(backend=True)

    @observe("history_dir", "cache")
    def _settings_changed(self, change: dict[str, Any]) -> None:
        if change["name"] == "history_dir":
            self._store = None
        self._reset(backend=False)

    def login(self, api_key: str) -> None:
        """Use ``api_key`` from now on; it is kept in memory only."""
        if not isinstance(api_key, str) or not api_key.strip():
            raise ValidationError("the API key is empty")
        self._api_key = Secret(api_key.strip())
        self._key_given = True
        self._reset(backend=True)

    def _reset(self, *, backend: bool) -> None:
        """Drop the executor (and the backend choice) so the next request uses the new settings."""
        executor, self._executor = self._executor, None
        if backend:
            self._backend = None
        if executor is not None:
            self._runner.submit(executor.client.aclose())

    @property
    def notebook(self) -> str:
        """The notebook's name, where the front end exposes it ("" otherwise)."""
        return self.notebook_detector()

    @property
    def backend(self) -> Backend:
        """Where requests go. Resolving starts nothing: the embedded server starts on the first request."""
        if self._backend is None:
            self._backend = resolve_backend(self.endpoint or None, self._api_key, self.region, self.billed)
        return self._backend

    @property
    def store(self) -> HistoryStore:
        if self._store is None:
            self._store = HistoryStore(Path(self.history_dir))
        return self._store

    def connect(self) -> Backend:
        """Make the backend reachable (starts the embedded preview server if it is the one, announced once)
        and ready what sending needs (the HTTP client, the history, the key's shared slots), so that the
        first request goes out at once."""
        return self._ready_executor().backend

    def _ready_executor(self) -> Executor:
        """The executor for the current settings, connecting first (built once, rebuilt after changes)."""
        if self._executor is None:
            backend = self._backend = connect(self.backend)
            key = self._api_key if backend.billed or (self._key_given and not backend.is_embedded) else None
            shared = None
            if self.share_slots:  # the key's slots across processes; max_concurrency caps this one under them
                try:
                    shared = SharedSlots.for_key(
                        key.reveal() if key else None, backend.base_url, say_after=self.slots_say_after
                    )
                except ValidationError as exc:  # no writable cache folder: this process counts alone
                    warnings.warn(f"flux_nb: slots not shared with other processes: {exc}", stacklevel=2)
            client = AsyncFluxClient(
                key,
                backend.base_url,
                max_active=self.max_concurrency,
                task_timeout=self.task_timeout,
                limits=BodyLimits(download_stall=self.download_stall),
                transport=self._transport,
                shared_slots=shared,
            )
            self._executor = Executor(
                client,
                backend,
                self.store,
                notebook=self.notebook_detector,
                cache=self.cache,
                on_spent=self._add_spent,
                experiment=lambda: self.experiment,
                ledger=self._ledger,
            )
        return self._executor

    def _add_spent(self, credits: float) -> None:
        self._spent += credits
        if self._balance is not None and self.backend.billed:
            self._balance -= credits

    # -- the balance ---------------------------------------------------------------------------

    def credits(self) -> float:
        """The account's balance in credits (``GET /v1/credits``). Once known, a batch whose estimate passes
        it is refused before anything is sent."""
        return self._runner.run(self._fetch_balance(self._ready_executor()))

    def fetch_credits(self) -> Future[float]:
        """``credits`` without blocking (for widgets, from any thread): a future of the balance."""
        return self._runner.submit(self._fetch_balance(self._ready_executor()))

    async def _fetch_balance(self, executor: Executor) -> float:
        self._balance = await executor.client.credits()
        return self._balance

    @property
    def balance(self) -> float | None:
        """The balance the API last gave (``credits()``) less what this session spent since; None until asked."""
        return self._balance

    # -- building requests ---------------------------------------------------------------------

    def _defaults(self) -> Defaults:
        """What requests get for the fields they leave out: this session's settings."""
        return Defaults(
            model=self.model,
            width=self.default_width,
            height=self.default_height,
            safety_tolerance=self.safety_tolerance,
            output_format=self.output_format,
            measure_url=self._reference_sizes() if self.measure_references else None,
            keys=tuple(configured_keys(self)),
        )

    def _reference_sizes(self) -> ReferenceSizes:
        """Measures URL references for this backend (each URL once per session and backend)."""
        backend = self.backend
        base_url = backend.base_url or ("http://127.0.0.1" if backend.is_embedded else "")
        policy = ProbePolicy.for_endpoint(base_url)
        if policy not in self._url_sizes:
            self._url_sizes[policy] = ReferenceSizes(policy)
        return self._url_sizes[policy]

    def prepare(self, prompt: str, **fields: Any) -> PreparedRequest:
        """Validate and price one request without sending it; draws a seed when none is given.

        Takes the fields of ``generate``.
        """
        batches.one_request(fields)
        return batches.prepare(prompt, self._defaults(), **fields)

    def batch(
        self,
        prompt: str | PromptTemplate | Sequence[str | PromptTemplate],
        *,
        axes: Sequence[Axis] = (),
        images: Any = None,
        **fields: Any,
    ) -> list[PreparedRequest]:
        """Every combination of the prompts, ``axes`` and list-valued fields, validated and priced (not sent)."""
        return batches.build(prompt, self._defaults(), axes=axes, images=images, **fields)

    def check_budget(self, batch: Sequence[PreparedRequest], *, confirm: bool = True) -> None:
        """Refuse, before anything is sent, a batch whose estimate would pass the budget, or (unless
        ``confirm``) the large-batch guard ``confirm_over``: BudgetError, LargeBatchError."""
        spending.check_webhooks(batch, to_bfl=self.backend.label == "bfl")
        billed = self.backend.billed
        threshold = None if confirm else spending.confirm_threshold(self.confirm_over, billed)
        balance = self._balance if billed else None
        if self.budget is None and threshold is None and balance is None:
            return
        label = self.backend.label
        cost = spending.estimate(batch, lambda p: cache_hit(self.store, label, p, enabled=self.cache) is not None)
        at_most = any(p.estimate_is_bound for p in batch)
        spending.check_spending(
            len(batch),
            cost,
            spent=self._spent,
            budget=self.budget,
            threshold=threshold,
            confirm=confirm,
            at_most=at_most,
            balance=balance,
        )

    # -- running -------------------------------------------------------------------------------

    def generate(self, prompt: str, **fields: Any) -> Result:
        """Generate one image; raises its FluxError if it fails (the record is kept).

        Fields: seed, width, height (or size=(W, H) / "WxH", aspect="16:9"), images (paths, URLs, bytes,
        PIL images, arrays, earlier Results), safety_tolerance, output_format, model, webhook_url,
        webhook_secret, steps, guidance, tag, fresh.

        >>> flux.generate("a red fox in snow", seed=42, width=768, height=512)  # doctest: +SKIP
        """
        return self.run([self.prepare(prompt, **fields)], confirm=True)[0].raise_for_error()

    async def agenerate(self, prompt: str, **fields: Any) -> Result:
        """Async twin of ``generate``, for ``await`` in notebook cells and async code."""
        batch = [self.prepare(prompt, **fields)]
        self.check_budget(batch)
        executor = self._ready_executor()
        try:
            results = await self._runner.wrap(executor.run_batch(batch, ignore))
        finally:
            self._notify()
        return results[0].raise_for_error()

    def sweep(
        self, prompt: str | Sequence[str], *, images: Any = None, confirm: bool = False, **fields: Any
    ) -> SweepResult:
        """Generate every combination of the list-valued fields, concurrently; shows as a grid.

        ``confirm=True`` sends a batch whose estimate passes ``confirm_over``.

        >>> flux.sweep("a lighthouse", seed=[1, 2, 3], width=[512, 1024], height=512)  # doctest: +SKIP
        """
        batch = self.batch(prompt, images=images, **fields)
        observer = self.observer_factory() if self.observer_factory else None
        return SweepResult(self.run(batch, observer, confirm=confirm))

    def run(
        self, batch: Sequence[PreparedRequest], observer: BatchObserver | None = None, *, confirm: bool = False
    ) -> list[Result]:
        """Run prepared requests concurrently; failures come back as results with ``error`` set.

        A batch estimated above ``confirm_over`` is sent only with ``confirm=True`` (else LargeBatchError).
        An interrupt (Ctrl-C) raises BatchInterrupted: never-sent requests stay for ``resume(unsent=True)``.
        """
        batch = list(batch)
        self.check_budget(batch, confirm=confirm)
        executor = self._ready_executor()
        if observer is not None:
            observer.started(batch)
        try:
            return relay(self._runner, lambda emit: executor.run_batch(batch, emit), observer, len(batch))
        finally:
            self._notify()

    def start(
        self, batch: Sequence[PreparedRequest], observer: BatchObserver | None = None, *, confirm: bool = False
    ) -> Future[list[Result]]:
        """Run a batch without blocking the caller (for widgets); ``observer`` is called on flux_nb's loop thread.

        Cancelling the future stops waiting: submitted records stay for ``resume``, never-sent ones for
        ``resume(unsent=True)``. ``confirm`` as in ``run``.
        """
        batch = list(batch)
        self.check_budget(batch, confirm=confirm)
        executor = self._ready_executor()
        if observer is not None:
            observer.started(batch)
        emit: Emit = ignore if observer is None else guarded(observer)
        future = self._runner.submit(executor.run_batch(batch, emit))
        future.add_done_callback(lambda _: self._notify())
        return future

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` after every request or batch ends (e.g. to refresh ``flux_history``)."""
        self._listeners.append(callback)

    def _notify(self) -> None:
        for callback in self._listeners:
            with contextlib.suppress(Exception):  # a listener must never break generation
                callback()

    def panel(self) -> Any:
        """The clickable panel on this session (ipywidgets); display it in a cell."""
        return presenter().panel(self)

    # -- records back into requests (the Recovery part) -----------------------------------------

    @property
    def _recovery(self) -> Recovery:
        return Recovery(self.store, self._defaults)

    def record(self, record_id: str) -> Record:
        """The history record ``record_id``."""
        return self._recovery.record(record_id)

    def result_of(self, record_id: str) -> Result:
        """A stored record as a Result (its image from disk)."""
        return self._ready_executor().result_from_record(self.record(record_id), cached=False)

    def references_of(self, record: Record) -> tuple[ImageInput, ...]:
        """The reference images of ``record`` from the history, ready to send as stored."""
        return self._recovery.references_of(record)

    def replay(self, record_id: str | os.PathLike[str], *, fresh: bool = True) -> Result:
        """Run a recorded request again, exactly (a new record pointing back to the old one).

        Takes a record id or an image file carrying its request (see ``request_from``).
        """
        return self.run([self._recovery.replayed(record_id, fresh=fresh)], confirm=True)[0]

    def resume(self, observer: BatchObserver | None = None, *, unsent: bool = False) -> Resumed:
        """Finish what a crash, a restart, an interrupt or a full disk left open; one result per record settled.

        Submitted tasks are finished from their polling URLs while those still work. A submit cut off
        mid-send is marked ``unknown`` (it may have created a task, so it is never resent on its own).
        Requests never sent are sent only with ``unsent=True``. Only this process's own records (none that a
        session here has queued or runs) and a dead local process's are taken up: submitted records another
        running process follows (a second kernel) or another host owns are left alone and listed in the
        result's ``elsewhere`` (``note()`` says so).
        """
        owed = self._ledger.flush()  # task ids and images a full disk kept in memory
        if owed:
            raise self._ledger.blocked
        work = self._recovery.open_work(unsent=unsent)
        executor = self._ready_executor()
        settled = [executor.result_from_record(record, cached=False) for record in work.settled]
        records, resend = work.finish, work.resend
        if not records and not resend:
            if settled:
                self._notify()
            return Resumed(settled, work.elsewhere)
        self.check_budget(list(resend.values()))
        if observer is not None:
            observer.started([prepared_from_record(r) for r in records] + list(resend.values()))
        size = len(records) + len(resend)
        try:
            results = relay(self._runner, lambda emit: executor.resume_batch(records, emit, resend), observer, size)
        finally:
            self._notify()
        return Resumed(settled + results, work.elsewhere)

    def unsent(self) -> list[Record]:
        """Requests never sent (a crash, a restart, an interrupt): ``resume(unsent=True)`` sends them."""
        return self._recovery.unsent()

    # -- experiments: naming, reviewing, restoring, handing over (the Experiments part) ------------

    @property
    def _experiments(self) -> Experiments:
        return Experiments(self.store, self._defaults, self._notify)

    @contextlib.contextmanager
    def experimenting(self, name: str) -> Iterator[Flux]:
        """Record every row of the block under experiment ``name``, then restore the one before.

        The ``experiment`` trait holds the name (a trait's value cannot also be called, hence this name).
        Rows take the name current when they are written, as a batch starts: for a batch left running
        in the background (``start``, the panel), set ``flux.experiment`` instead.

        >>> with flux.experimenting("study-3"):  # doctest: +SKIP
        ...     flux.sweep("a lighthouse", seed=[1, 2])
        """
        if not isinstance(name, str):
            raise ValidationError(f"experiment name {name!r} is not text; give a name such as 'study-3'")
        before, self.experiment = self.experiment, name
        try:
            yield self
        finally:
            self.experiment = before

    def rate(self, target: Any, stars: int | None) -> list[str]:
        """Give 0 to 5 stars (None clears) to records: ids, Results, a SweepResult, a frame or a list.

        A use (a cache hit) reviews the image it showed; returns the ids of the records reviewed.
        """
        return self._experiments.rate(target, stars)

    def note(self, target: Any, text: str | None) -> list[str]:
        """Set a note on records (None or "" clears it); targets as for ``rate``."""
        return self._experiments.note(target, text)

    def tag(self, target: Any, add: Iterable[str] | str = (), remove: Iterable[str] | str = ()) -> list[str]:
        """Add and remove review tags (words without commas) on records; targets as for ``rate``."""
        return self._experiments.tag(target, add=add, remove=remove)

    def favourite(self, target: Any, on: bool = True) -> list[str]:
        """Mark records as favourites (``on=False`` unmarks); targets as for ``rate``."""
        return self._experiments.favourite(target, on=on)

    def export_image(self, result_or_id: Result | str, path: str | os.PathLike[str]) -> Path:
        """Copy a result's image to ``path`` (a file, or a folder) with its request and review written in."""
        return self._experiments.export_image(result_or_id, path)

    def request_from(self, path: str | os.PathLike[str]) -> PreparedRequest:
        """The request that made an image file (flux_nb's provenance, or another tool's A1111 ``parameters``),
        validated and priced, with its reference images from this history (missing ones are named)."""
        return self._experiments.request_from(path)

    def export(self, frame_or_filter: Any = None, path: str | os.PathLike[str] | None = None, **filters: Any) -> Path:
        """Write an experiment as one zip (rows as Parquet, CSV and SQLite, images, references, reviews).

        >>> flux.export(experiment="study-3", path="study-3.zip")  # doctest: +SKIP
        """
        return self._experiments.export(frame_or_filter, path, **filters)

    def report(
        self,
        frame_or_filter: Any = None,
        path: str | os.PathLike[str] | None = None,
        *,
        title: str = "flux_nb experiment",
        grids: Any = None,
        **filters: Any,
    ) -> Path:
        """Write one self-contained HTML page (grids, a sortable table with thumbnails and reviews, the cost).

        ``grids``: None or "batches" (one grid per batch, on its own axes), "none", batch ids, or grids.

        >>> flux.report(experiment="study-3", path="study-3.html", grids="batches")  # doctest: +SKIP
        """
        return self._experiments.report(frame_or_filter, path, title=title, grids=grids, **filters)

    def open_bundle(self, path: str | os.PathLike[str], into: str | os.PathLike[str] | None = None) -> Flux:
        """Unpack a bundle into ``into`` (default: a folder named after the zip) and return a session on it."""
        from flux_nb.export import open_bundle

        folder = open_bundle(path, bundle_folder(path, into))
        names = [n for n in self.trait_names(config=True) if n not in ("history_dir", "experiment")]
        session = type(self)(history_dir=folder, transport=self._transport, **{n: getattr(self, n) for n in names})
        session._api_key, session._key_given = self._api_key, self._key_given
        session.observer_factory, session.notebook_detector = self.observer_factory, self.notebook_detector
        return session

    # -- history -------------------------------------------------------------------------------

    def history(
        self, experiment: str | None = None, tag: str | None = None, notebook: str | None = None
    ) -> pd.DataFrame:
        """Every recorded request and every use of an earlier image (a cache hit: ``cached`` True, cost 0),
        one row each, as a pandas DataFrame (``frame.flux.grid(...)`` works on it).

        ``experiment``, ``tag`` and ``notebook`` keep the rows with that value (filtered in SQL): the
        images the cells of that experiment, tag or notebook showed.
        """
        import flux_nb.accessor  # noqa: F401  (registers frame.flux)

        frame = self.store.to_frame(experiment=experiment, tag=tag, notebook=notebook)
        frame.attrs["history_dir"] = str(self.history_dir)
        return frame

    def compare(self, *items: Any) -> Any:
        """Two or more results, record ids or history rows with a slider, a flip, side by side and a difference."""
        return presenter().compare(self, items)

    def browse(self, **filters: Any) -> Any:
        """The history as pages of thumbnails: filter, rate, favourite, note, compare two, grid or export many."""
        return presenter().browse(self, filters)

    def cost(self, experiment: str | None = None) -> pd.DataFrame:
        """Credits by model: in this notebook (this kernel, where its name is not known) and in all.

        ``experiment`` counts only that experiment's requests (its cache hits cost nothing).
        """
        notebook = self.notebook
        if notebook:
            return self.store.spent(notebook, experiment=experiment)
        return self.store.spent(owner=process_owner(), experiment=experiment)

    def spent(self) -> float:
        """Credits spent by this session so far (billed or, on a local server, would-be)."""
        return self._spent

    def close(self) -> None:
        """Close the HTTP client, stop the private loop and close the history (its rows in its main file)."""
        if self._executor is not None:
            self._runner.run(self._executor.client.aclose())
            self._executor = None
        self._runner.close()
        if self._store is not None:
            self._store.close()


def configured_keys(session: Any) -> list[str]:
    """The API keys no prompt or request field may carry: the session's and those in the environment."""
    secret = getattr(session, "_api_key", None)
    keys = [secret.reveal()] if secret else []
    keys += [os.environ.get(name, "") for name in (protocol.KEY_ENV, ENDPOINT_KEY_ENV)]
    return list(dict.fromkeys(key for key in keys if key))


__all__ = ["BatchObserver", "Flux", "PreparedRequest", "draw_seed", "notebook_name"]
