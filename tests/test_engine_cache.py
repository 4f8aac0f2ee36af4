"""The diffusers engine's prompt-embedding cache: a seed sweep over one prompt encodes it once, and its images
are bit-identical to those of an engine that lets the pipeline encode every prompt itself.

On the tiny FLUX.2 [klein] built offline; skipped, with the reason, without the [local] extra.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from flux_nb.server.engines.prompt_cache import PromptCache

pytest.importorskip("torch", reason="the [local] extra is not installed (pip install 'flux-nb[local]')")
pytest.importorskip("diffusers", reason="the [local] extra is not installed (pip install 'flux-nb[local]')")

from flux_nb.server.engines import RenderJob
from flux_nb.server.engines.diffusers import DiffusersEngine, DiffusersOptions
from tests.tiny_klein import tiny_pipeline

pytestmark = pytest.mark.local


def engine(cache: int, *, distilled: bool = True, routes: dict[str, str] | None = None) -> DiffusersEngine:
    """An engine on a fresh tiny pipeline (same weights every time) keeping ``cache`` prompt encodings."""
    pipeline = tiny_pipeline()
    pipeline.register_to_config(is_distilled=distilled)
    options = DiffusersOptions(model="tiny", model_for=routes or {}, device="cpu", prompt_cache=cache)
    return DiffusersEngine(options, pipeline=pipeline)


def encoder_calls(engine: DiffusersEngine) -> list[int]:
    """One entry per text encoder run."""
    calls: list[int] = []
    engine.pipeline.text_encoder.register_forward_pre_hook(lambda module, args: calls.append(1))
    return calls


def pixels(engine: DiffusersEngine, prompt: str, seed: int, model: str = "flux-2-klein-4b") -> bytes:
    buffer = io.BytesIO()
    engine.render(RenderJob(prompt, seed, 64, 64, model)).save(buffer, "PNG")
    return buffer.getvalue()


def test_a_seed_sweep_encodes_its_prompt_once_with_images_bit_identical_to_uncached() -> None:
    cached, uncached = engine(8), engine(0)
    cached_calls, uncached_calls = encoder_calls(cached), encoder_calls(uncached)
    sweep = [pixels(cached, "a lighthouse at dusk", seed) for seed in range(4)]
    assert len(cached_calls) == 1 and (cached.prompts.hits, cached.prompts.misses) == (3, 1)
    assert sweep == [pixels(uncached, "a lighthouse at dusk", seed) for seed in range(4)]
    assert len(uncached_calls) == 4
    assert len(set(sweep)) == 4  # four seeds, four images
    pixels(cached, "another prompt", 0)
    assert len(cached_calls) == 2


def test_base_weights_encode_the_guidance_prompt_once_too() -> None:
    cached, uncached = engine(8, distilled=False), engine(0, distilled=False)
    calls = encoder_calls(cached)
    cached.options = DiffusersOptions(model="tiny", device="cpu", steps=2, prompt_cache=8)  # keep it quick
    uncached.options = DiffusersOptions(model="tiny", device="cpu", steps=2, prompt_cache=0)
    sweep = [pixels(cached, "a fox", seed) for seed in range(3)]
    assert len(calls) == 2  # the prompt and the empty guidance prompt, once each
    assert sweep == [pixels(uncached, "a fox", seed) for seed in range(3)]


def test_the_cache_is_keyed_by_the_weights_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tiny_pipeline(seed=1).save_pretrained(tmp_path)
    two = engine(8, routes={"flux-2-klein-9b": str(tmp_path)})
    other_calls: list[int] = []
    calls = encoder_calls(two)
    two.pipeline_for("flux-2-klein-9b").text_encoder.register_forward_pre_hook(
        lambda module, args: other_calls.append(1)
    )
    pixels(two, "one prompt", 1)
    pixels(two, "one prompt", 1, "flux-2-klein-9b")
    pixels(two, "one prompt", 2, "flux-2-klein-9b")
    assert (len(calls), len(other_calls)) == (1, 1)


def test_the_cache_is_bounded_and_drops_the_least_recently_used() -> None:
    cache = PromptCache(2)
    made: list[str] = []

    def get(key: str) -> str:
        return cache.get(key, lambda: made.append(key) or key.upper())

    assert [get("a"), get("b"), get("a"), get("c")] == ["A", "B", "A", "C"]  # c pushes out b, not a
    assert len(cache) == 2 and made == ["a", "b", "c"]
    get("a")
    get("b")
    assert made == ["a", "b", "c", "b"]
    nothing_kept = PromptCache(0)
    nothing_kept.get("a", lambda: 1)
    assert len(nothing_kept) == 0
    with pytest.raises(ValueError, match="0 or more"):
        PromptCache(-1)
