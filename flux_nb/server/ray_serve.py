"""The local engine as a Ray Serve deployment: N replicas, one model copy each, for when one GPU is not enough.

The protocol front (task table, keys, the 24-per-key rule, deliveries, webhooks) stays one FastAPI app in
this process; it holds a ``DeploymentHandle`` through ``RayEngine``, which looks like any other engine to
the task table. Ray routes each render to a free replica. Needs ``pip install 'flux-nb[ray]'``: nothing
in the base package imports this module, and Ray itself is imported only inside its functions.

>>> with serve_with_ray(ServerConfig(engine="diffusers"), replicas=4) as ray_serving:  # doctest: +SKIP
...     app = ray_serving.app()
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from PIL import Image

from flux_nb.server.config import ServerConfig
from flux_nb.server.engines import DETAILS_KEY, Engine, RenderJob, get_engine
from flux_nb.server.engines.checkpoints import configured_routes

if TYPE_CHECKING:
    from fastapi import FastAPI

INSTALL_HINT = "install the ray extra: pip install 'flux-nb[ray]'"
DEPLOYMENT = "flux-engine"
# Requests a replica holds: one rendering, one waiting on it, so no replica idles while Ray routes the next.
ON_EACH_REPLICA = 2
# Ray's switch for Windows/macOS clusters: "0" keeps a local instance on the loopback address.
LOOPBACK_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# Where each replica's inter-deployment gRPC server listens (Ray's own choice: every interface). The
# front calls replicas through Ray's actor calls, never through it.
REPLICA_GRPC_HOST = "127.0.0.1"


class RayUnavailable(RuntimeError):
    """Ray cannot serve the engine here; the message says why and what to do."""


class ReplicaLost(RuntimeError):
    """The replica rendering an image died, and so did the one that rendered it again."""


class EngineReplica:
    """One replica of the deployment: one engine (one model copy, on the device Ray gave this actor).

    ``latency`` is simulated generation time per image, spent while the replica is busy (as a GPU
    would be), so N replicas render N times as many images per second as one.
    """

    def __init__(
        self, engine_factory: Callable[[], Engine], latency: float = 0.0, grpc_host: str | None = REPLICA_GRPC_HOST
    ) -> None:
        listen_on(grpc_host)  # before Ray starts this replica's gRPC server, which it does once we are built
        self.engine = engine_factory()
        self.latency = latency
        self.busy = asyncio.Lock()  # one image at a time; the next one waits here, already delivered

    async def render(self, job: RenderJob) -> Image.Image:
        from ray import serve

        async with self.busy:
            started = time.monotonic()
            loop = asyncio.get_running_loop()
            image = await loop.run_in_executor(getattr(self.engine, "executor", None), self.engine.render, job)
            remaining = started + self.latency - time.monotonic()
            if remaining > 0:
                await asyncio.sleep(remaining)
        image.info.setdefault(DETAILS_KEY, {})["replica"] = serve.get_replica_context().replica_id.to_full_id_str()
        return image


def grpc_address(address: str, host: str) -> str:
    """``address`` (``[::]:0``, as Ray binds it) on ``host`` instead, same port."""
    port = address.rpartition(":")[2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class BindOn:
    """Ray's gRPC port binding, moved to ``host``."""

    bind: Callable[[Any, str], int]
    host: str

    def __call__(self, server: Any, address: str) -> int:
        return self.bind(server, grpc_address(address, self.host))


def listen_on(host: str | None) -> None:
    """Bind this process's replica gRPC server on ``host`` instead of every interface (None: Ray's own choice)."""
    from ray.serve._private import replica

    current = replica.add_port_to_grpc_server
    ray_bind = current.bind if isinstance(current, BindOn) else current
    replica.add_port_to_grpc_server = ray_bind if host is None else BindOn(ray_bind, host)


class RayEngine:
    """The engine as the task table sees it: each render is one call to a replica through the handle.

    A replica that dies mid-render costs that render, not the task: it runs once more on another
    replica (Ray drops the dead one from routing) and the task's details say so. A second death,
    or no answer within ``timeout`` seconds, ends the task with status Error. Nothing is charged
    twice: the task table charges a task once, when it turns Ready.
    """

    def __init__(
        self,
        handle: Any,
        name: str,
        *,
        concurrency: int,
        timeout: float = 600.0,
        routes: dict[str, str] | None = None,
    ) -> None:
        self.handle = handle
        self.name = name
        self.routes = routes  # route -> the weights the replicas hold for it; None: every route
        self.timeout = timeout
        self.reruns = 0
        # Each in-flight render waits for its replica on a thread of its own.
        self.executor = ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="flux-ray")

    def render(self, job: RenderJob) -> Image.Image:
        from ray.exceptions import RayActorError

        try:
            return self._call(job)
        except RayActorError as first:
            self.reruns += 1
            try:
                image = self._call(job)
            except RayActorError as second:
                raise ReplicaLost(f"two replicas died rendering this image ({type(second).__name__})") from first
            image.info.setdefault(DETAILS_KEY, {})["rerun"] = f"the first replica died ({type(first).__name__})"
            return image

    def _call(self, job: RenderJob) -> Image.Image:
        response = self.handle.render.remote(job)
        try:
            return response.result(timeout_s=self.timeout)
        except TimeoutError:
            response.cancel()
            raise TimeoutError(f"no replica rendered the image within {self.timeout:g} s") from None

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


@dataclass
class RayServing:
    """A running deployment: the engine for the front, the front's config, and a one-line note on where."""

    engine: RayEngine
    config: ServerConfig  # the front's: the simulated latency is spent in the replicas instead
    note: str
    app_name: str
    started_ray: bool  # a local instance this process started (stopped by close)
    connected: bool  # this process joined Ray for the deployment (and leaves it on close)

    def app(self) -> FastAPI:
        """The protocol front: the local server's app, rendering through the replicas."""
        from flux_nb.server.app import create_app

        return create_app(self.config, self.engine)

    def close(self) -> None:
        """Remove the deployment; stop Ray if this process started it, leave it if it joined."""
        from ray import serve

        self.engine.close()
        if not self.started_ray:
            serve.delete(self.app_name)
        disconnect(self.started_ray, self.connected)

    def __enter__(self) -> RayServing:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def engine_builder(name: str, options: dict[str, Any]) -> Callable[[], Engine]:
    """A picklable recipe for the engine each replica builds for itself."""
    return _EngineRecipe(name, dict(options))


@dataclass(frozen=True)
class _EngineRecipe:
    name: str
    options: dict[str, Any]

    def __call__(self) -> Engine:
        return get_engine(self.name, self.options)


def serve_with_ray(
    config: ServerConfig,
    replicas: int = 1,
    ray_address: str | None = None,
    gpus_per_replica: float | None = None,
    num_cpus_per_replica: float = 1.0,
    *,
    max_replicas: int | None = None,
    engine_factory: Callable[[], Engine] | None = None,
    timeout: float = 600.0,
    app_name: str = "flux-nb",
    runtime_env: dict[str, Any] | None = None,
    replica_grpc_host: str | None = REPLICA_GRPC_HOST,
) -> RayServing:
    """Deploy ``config.engine`` on Ray Serve and return the engine the front renders through.

    ``replicas`` model copies, each with ``gpus_per_replica`` GPUs (default 1 for diffusers, 0 for
    preview) and ``num_cpus_per_replica`` CPUs; with ``max_replicas``, Ray Serve scales between
    the two on load. ``ray_address`` joins an existing cluster (``ray://...``, ``auto``, a KubeRay
    head); without it a local instance starts on 127.0.0.1 (or the one this process already uses).
    A cluster's workers need flux_nb and the engine's packages: in their image, or via ``runtime_env``
    (e.g. ``{"pip": ["flux-nb[local]"]}``). A call that outlives ``timeout`` seconds ends its task Error.
    Each replica's gRPC server (Ray's inter-deployment calls) listens on ``replica_grpc_host`` (None: every
    interface, Ray's default).

    >>> serving = serve_with_ray(ServerConfig(engine="diffusers"), replicas=2)  # doctest: +SKIP
    >>> print(serving.note)  # doctest: +SKIP
    Ray: started a local instance on 127.0.0.1 (16 CPUs, 2 GPUs); 2 replicas of diffusers (1 CPU, 1 GPU each)
    """
    gpus = check_sizes(config, replicas, max_replicas, gpus_per_replica, num_cpus_per_replica)
    most = max_replicas or replicas
    started, connected, where = connect(ray_address, most * num_cpus_per_replica, most * gpus, runtime_env)
    from ray import serve

    options: dict[str, Any] = {
        "name": DEPLOYMENT,
        "max_ongoing_requests": ON_EACH_REPLICA,
        "ray_actor_options": {"num_cpus": num_cpus_per_replica, "num_gpus": gpus},
    }
    if max_replicas:
        options["autoscaling_config"] = {
            "min_replicas": replicas,
            "max_replicas": max_replicas,
            "target_ongoing_requests": 1,
        }
    else:
        options["num_replicas"] = replicas
    factory = engine_factory or engine_builder(config.engine, config.engine_options)
    try:
        serve.start(proxy_location="Disabled")
        deployment = serve.deployment(**options)(EngineReplica).bind(factory, config.latency, replica_grpc_host)
        handle = serve.run(deployment, name=app_name, route_prefix=None)
    except Exception as exc:
        reason = failure_reason(app_name) or str(exc)
        disconnect(started, connected)
        raise RayUnavailable(f"the {config.engine} deployment did not start: {reason}") from exc
    routes = configured_routes(config.engine, config.engine_options)
    engine = RayEngine(handle, config.engine, concurrency=config.max_active, timeout=timeout, routes=routes)
    count = f"{replicas} to {max_replicas}" if max_replicas else f"{replicas}"
    note = (
        f"Ray: {where}; {count} replica{'s' if most > 1 else ''} of {config.engine} "
        f"({num_cpus_per_replica:g} CPU, {gpus:g} GPU each)"
    )
    front = replace(config, latency=0.0)
    return RayServing(engine, front, note, app_name, started_ray=started, connected=connected)


def check_sizes(
    config: ServerConfig, replicas: int, max_replicas: int | None, gpus: float | None, cpus: float
) -> float:
    """Refuse impossible sizes in one line, before Ray starts; returns the GPUs per replica."""
    from flux_nb.errors import ValidationError

    if replicas < 1:
        raise ValidationError(f"replicas must be at least 1, got {replicas}")
    if max_replicas is not None and max_replicas < replicas:
        raise ValidationError(f"max_replicas {max_replicas} is below replicas {replicas} (raise it, or leave it out)")
    if cpus < 0:
        raise ValidationError(f"CPUs per replica cannot be negative, got {cpus:g}")
    if gpus is not None and gpus < 0:
        raise ValidationError(f"GPUs per replica cannot be negative, got {gpus:g}")
    return gpus if gpus is not None else (1.0 if config.engine == "diffusers" else 0.0)


def keep_local_on_loopback() -> None:
    """Keep a local instance on 127.0.0.1, also where Ray was imported before (it reads its switch at import)."""
    os.environ.setdefault(LOOPBACK_ONLY, "0")
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = os.environ[LOOPBACK_ONLY] != "0"


def connect(
    ray_address: str | None, cpus: float, gpus: float, runtime_env: dict[str, Any] | None = None
) -> tuple[bool, bool, str]:
    """Join the cluster at ``ray_address`` or start a local instance; returns (started, connected, where).

    A local instance is one machine's: Ray then puts every process on 127.0.0.1.
    """
    try:
        import ray
    except ImportError:
        raise RayUnavailable(f"Ray is not installed: {INSTALL_HINT}") from None
    if not ray_address:
        keep_local_on_loopback()
    if ray.is_initialized():
        return False, False, "using the Ray instance this process is connected to"
    if ray_address:
        ray.init(address=ray_address, log_to_driver=False, runtime_env=runtime_env)
        return False, True, f"joined the cluster at {ray_address}"
    num_cpus = max(os.cpu_count() or 1, math.ceil(cpus))
    try:
        ray.init(num_cpus=num_cpus, include_dashboard=False, runtime_env=runtime_env, log_to_driver=False)
    except Exception:  # Ray gives its processes 30 s to come up, which a busy machine can miss: once more
        ray.shutdown()
        ray.init(num_cpus=num_cpus, include_dashboard=False, runtime_env=runtime_env, log_to_driver=False)
    found = ray.cluster_resources().get("GPU", 0.0)
    if gpus > found:
        ray.shutdown()
        raise RayUnavailable(f"the replicas need {gpus:g} GPUs and this machine has {found:g} (ask for fewer)")
    host, cpus_found = ray.util.get_node_ip_address(), ray.cluster_resources().get("CPU", 0)
    where = f"started a local instance on {host} ({cpus_found:g} CPUs, {found:g} GPUs)"
    return True, True, where


def failure_reason(app_name: str) -> str:
    """The last line of what Serve says about a deployment that failed (its replicas' exception)."""
    from ray import serve

    try:
        message = serve.status().applications[app_name].deployments[DEPLOYMENT].message
    except Exception:  # no status to read: the caller falls back to Serve's own error
        return ""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def disconnect(started: bool, connected: bool) -> None:
    """Undo ``connect``: stop Serve on a local instance this process started, and leave Ray if it joined."""
    import ray
    from ray import serve

    if started:
        serve.shutdown()
    if connected:
        ray.shutdown()
