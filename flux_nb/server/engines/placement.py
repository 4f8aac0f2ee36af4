"""Where and how a loaded pipeline runs: device or CPU offload, regional compile, attention backend."""

from __future__ import annotations

from typing import Any


class EngineUnavailable(RuntimeError):
    """The engine cannot run here; the message says what to install or download."""


# Arguments for torch.compile of the transformer's repeated blocks: dynamic shapes, so a new size does
# not compile again (dynamo gives up recompiling after 8), and one graph per block.
COMPILE_ARGUMENTS: dict[str, Any] = {"fullgraph": True, "dynamic": True}


def place(pipeline: Any, device: str, dtype: Any, *, cpu_offload: bool, compile: bool) -> Any:
    """``pipeline`` on ``device`` (with ``cpu_offload``: one component at a time on that GPU), compiled if asked."""
    if cpu_offload and device.startswith("cuda"):
        # The device names the GPU ("cuda:1"): without it, offload goes to GPU 0 whatever --device says.
        pipeline.enable_model_cpu_offload(device=device)
    else:
        pipeline = pipeline.to(device, dtype)
    if compile:
        pipeline.transformer.compile_repeated_blocks(**COMPILE_ARGUMENTS)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def attention_backends() -> list[str]:
    """The attention backends the installed diffusers offers (``--attention``)."""
    from diffusers.models.attention_dispatch import AttentionBackendName

    return sorted(name.value for name in AttentionBackendName)


def set_attention(pipeline: Any, backend: str) -> None:
    """Use ``backend`` for the transformer's attention; refused clearly when unknown or not installed here."""
    offered = attention_backends()
    if backend not in offered:
        raise EngineUnavailable(
            f"--attention {backend!r} is not a backend diffusers offers here ({', '.join(offered)})"
        )
    try:
        pipeline.transformer.set_attention_backend(backend)
    except (RuntimeError, ValueError, ImportError) as exc:
        raise EngineUnavailable(f"--attention {backend} cannot run here: {exc}") from None
