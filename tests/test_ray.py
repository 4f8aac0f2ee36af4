"""The engine as a Ray Serve deployment behind the one protocol front, on a local Ray instance on 127.0.0.1."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from flux_nb.errors import TaskFailedError, ValidationError
from flux_nb.http.client import AsyncFluxClient, TaskResult
from flux_nb.protocol import FluxRequest
from flux_nb.server import EmbeddedServer, ServerConfig
from flux_nb.server.engines import RenderJob
from flux_nb.server.engines.preview import PreviewEngine
from flux_nb.server.ray_serve import RayServing, serve_with_ray
from tests import official_client

# Found, not imported: serve_with_ray imports Ray itself, after asking it to stay on 127.0.0.1.
if importlib.util.find_spec("ray") is None:
    pytest.skip("needs the ray extra: pip install 'flux-nb[ray]'", allow_module_level=True)

pytestmark = pytest.mark.ray

LATENCY = 0.05  # seconds each replica is busy per image


class HoldingPreview(PreviewEngine):
    """The preview engine, except that a prompt ``hold-N`` blocks its first N renders until the replica is killed.

    Each blocked render leaves a marker file ``<prompt>.<k>`` naming its replica, so the test
    kills a replica that is known to be mid-render.
    """

    def __init__(self, markers: str) -> None:
        self.markers = Path(markers)

    def render(self, job: RenderJob) -> Image.Image:
        if job.prompt.startswith("hold-"):
            for k in range(int(job.prompt.split("-")[1])):
                try:
                    fd = os.open(self.markers / f"{job.prompt}.{k}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    continue
                from ray import serve

                os.write(fd, serve.get_replica_context().replica_id.to_full_id_str().encode())
                os.close(fd)
                time.sleep(60)
        return super().render(job)


@pytest.fixture(scope="module")
def serving() -> Iterator[RayServing]:
    """Two preview replicas on a local Ray instance that serve_with_ray starts (and stops) itself."""
    with serve_with_ray(ServerConfig(latency=LATENCY), replicas=2, num_cpus_per_replica=0.5) as serving:
        assert serving.note.startswith("Ray: started a local instance on 127.0.0.1 (")
        assert serving.note.endswith("; 2 replicas of preview (0.5 CPU, 0 GPU each)")
        yield serving
    import ray

    assert not ray.is_initialized()


@pytest.fixture(scope="module")
def front(serving: RayServing) -> Iterator[EmbeddedServer]:
    with EmbeddedServer(serving.config, app=serving.app()) as server:
        yield server


@pytest.fixture(scope="module")
def single() -> Iterator[EmbeddedServer]:
    """The single-process server with the same engine, for comparing bytes."""
    with EmbeddedServer(ServerConfig()) as server:
        yield server


def replica_names(app_name: str) -> set[str]:
    """The Serve replica actors of one application, as Ray names them."""
    import ray

    actors = ray.util.list_named_actors(all_namespaces=True)
    return {a["name"] for a in actors if a["name"].startswith(f"SERVE_REPLICA::{app_name}#")}


async def sweep(url: str, requests: list[FluxRequest]) -> list[TaskResult | BaseException]:
    async with AsyncFluxClient(None, url, task_timeout=120) as client:
        return await asyncio.gather(*(client.generate(r) for r in requests), return_exceptions=True)


def test_a_48_image_sweep_is_spread_over_both_replicas(serving: RayServing, front: EmbeddedServer) -> None:
    requests = [FluxRequest(f"a lighthouse, take {i}", seed=i, width=256, height=256) for i in range(48)]
    results = asyncio.run(sweep(front.url, requests))
    assert all(isinstance(r, TaskResult) for r in results), [r for r in results if not isinstance(r, TaskResult)]
    assert [r.seed for r in results] == list(range(48))
    assert {r.details["replica"] for r in results} == replica_names("flux-nb")
    assert len(replica_names("flux-nb")) == 2
    assert all(r.engine == "preview" for r in results)
    stats = front.stats()
    assert stats["active"] == 0 and stats["peak_active"] <= 24


@pytest.mark.parametrize("output_format", ["jpeg", "png"])
def test_same_request_gives_the_same_bytes_as_the_single_process_server(
    front: EmbeddedServer, single: EmbeddedServer, output_format: str
) -> None:
    request = FluxRequest("a red fox in snow", seed=1234, width=320, height=192, output_format=output_format)
    (through_ray,) = asyncio.run(sweep(front.url, [request]))
    (in_process,) = asyncio.run(sweep(single.url, [request]))
    assert isinstance(through_ray, TaskResult) and isinstance(in_process, TaskResult)
    assert through_ray.image == in_process.image
    assert "replica" in through_ray.details and "replica" not in in_process.details


def test_the_official_blackforest_client_works_against_the_front(front: EmbeddedServer) -> None:
    code, last = official_client.generate(front.url)
    assert code == 0, last
    seed, size = last.split()  # the client prints its own lines first
    assert seed == "3" and int(size) > 1000


@pytest.fixture(scope="module")
def markers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("held-renders")


@pytest.fixture(scope="module")
def holding(serving: RayServing, markers: Path) -> Iterator[tuple[RayServing, EmbeddedServer]]:
    """Three replicas of HoldingPreview in the module's Ray instance: two can die while replacements start."""
    held = serve_with_ray(
        ServerConfig(latency=LATENCY),
        replicas=3,
        num_cpus_per_replica=0.25,
        engine_factory=lambda: HoldingPreview(str(markers)),
        app_name="flux-nb-kill",
        timeout=60,
    )
    with held, EmbeddedServer(held.config, app=held.app()) as server:
        yield held, server
    import ray

    assert ray.is_initialized()  # the module's instance stays up: only this application went away


async def kill_when_held(marker: Path) -> str:
    """Wait until a replica is blocked in a render, then kill that replica through Ray's API."""
    import ray

    for _ in range(600):
        if marker.exists() and marker.read_text():
            name = marker.read_text()
            ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
            return name
        await asyncio.sleep(0.05)
    raise AssertionError(f"no replica started rendering {marker.name}")


def test_a_replica_killed_mid_sweep_costs_a_rerun_not_a_task(
    holding: tuple[RayServing, EmbeddedServer], markers: Path
) -> None:
    held, server = holding
    before, reruns = server.stats(), held.engine.reruns
    requests = [FluxRequest("hold-1", seed=0, width=128, height=128)]
    requests += [FluxRequest("a sweep around a killed replica", seed=i, width=128, height=128) for i in range(1, 16)]

    async def run() -> tuple[list[TaskResult | BaseException], str]:
        return await asyncio.gather(sweep(server.url, requests), kill_when_held(markers / "hold-1.0"))

    results, killed = asyncio.run(run())
    assert all(isinstance(r, TaskResult) for r in results), [r for r in results if not isinstance(r, TaskResult)]
    # The held image was rendered again by another replica: by our engine's one re-run (said in its details),
    # or, when the replica died before Ray Serve handed the call over, by Serve's own routing.
    assert results[0].details["replica"] != killed
    assert results[0].details.get("rerun", "the first replica died (ActorDiedError)") == (
        "the first replica died (ActorDiedError)"
    )
    # The killed replica held the blocked render and at most the one waiting behind it: each was re-run elsewhere.
    rerun = [r for r in results if "rerun" in r.details]
    assert len(rerun) <= 2 and killed not in {r.details["replica"] for r in rerun}
    after = server.stats()
    assert after["active"] == 0 and held.engine.reruns == reruns + len(rerun)
    assert [after[k] - before[k] for k in ("submits", "ready", "failed", "charged")] == [16, 16, 0, 16]


def test_a_task_whose_replicas_die_twice_ends_error_with_the_reason(
    holding: tuple[RayServing, EmbeddedServer], markers: Path
) -> None:
    held, server = holding
    before, reruns = server.stats(), held.engine.reruns

    async def run() -> tuple[list[TaskResult | BaseException], str, str]:
        results = sweep(server.url, [FluxRequest("hold-2", seed=0, width=128, height=128)])
        return await asyncio.gather(results, kill_when_held(markers / "hold-2.0"), kill_when_held(markers / "hold-2.1"))

    (result,), first, second = asyncio.run(run())
    assert first != second
    assert isinstance(result, TaskFailedError)
    assert "ReplicaLost: two replicas died rendering this image (ActorDiedError)" in str(result)
    after = server.stats()
    assert after["active"] == 0 and held.engine.reruns == reruns + 1
    assert [after[k] - before[k] for k in ("submits", "ready", "failed", "charged")] == [1, 0, 1, 0]


def test_impossible_sizes_are_refused_before_ray_starts() -> None:
    with pytest.raises(ValidationError, match="replicas must be at least 1, got 0"):
        serve_with_ray(ServerConfig(), replicas=0)
    with pytest.raises(ValidationError, match="max_replicas 1 is below replicas 2"):
        serve_with_ray(ServerConfig(), replicas=2, max_replicas=1)
