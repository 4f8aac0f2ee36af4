"""The diffusers engine: the open FLUX.2 [klein] weights behind the local server.

Needs ``pip install 'flux-nb[local]'`` (torch, diffusers, transformers, accelerate); the
base install never imports torch. The model loads once; requests run one at a time, in
the order they arrived, on a single worker thread that owns the device.
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from PIL import Image

from flux_nb.server.engines.base import JobRefused, RenderJob

MAX_REFERENCES = 4  # klein takes at most 4 reference images
MAX_PROMPT_TOKENS = 512  # the text encoder's window; the pipeline cuts longer prompts
DEFAULT_MODEL = "black-forest-labs/FLUX.2-klein-4B"
INSTALL_HINT = (
    "install the local extra: pip install torch (a CUDA build for GPUs, see pytorch.org), "
    "then pip install 'flux-nb[local]'"
)


class EngineUnavailable(RuntimeError):
    """The engine cannot run here; the message says what to install or download."""


@dataclass(frozen=True)
class DiffusersOptions:
    """How to load and run the pipeline. Distilled klein wants about 4 steps at guidance 1."""

    model: str = DEFAULT_MODEL
    device: str | None = None  # cuda when available, else cpu
    dtype: str | None = None  # bfloat16 on a GPU, float32 on the CPU
    cpu_offload: bool = False
    compile: bool = False
    steps: int = 4
    guidance: float = 1.0


def _import_stack() -> tuple[Any, Any]:
    try:
        import torch
        from diffusers import Flux2KleinPipeline
    except ImportError as exc:
        raise EngineUnavailable(
            f"the diffusers engine needs torch and diffusers>=0.37 ({exc}); {INSTALL_HINT}"
        ) from None
    return torch, Flux2KleinPipeline


def _device(torch: Any, wanted: str | None) -> str:
    if wanted is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if wanted.startswith("cuda") and not torch.cuda.is_available():
        raise EngineUnavailable(
            f"--device {wanted} was asked for but torch sees no CUDA GPU (torch {torch.__version__}); "
            "install a CUDA build of torch on a GPU machine, or use --device cpu (slow)"
        )
    return wanted


def _dtype(torch: Any, wanted: str | None, device: str) -> Any:
    name = wanted or ("bfloat16" if device.startswith("cuda") else "float32")
    aliases = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
    dtype = getattr(torch, aliases.get(name, name), None)
    if not isinstance(dtype, torch.dtype):
        raise EngineUnavailable(f"--dtype {name!r} is not a torch dtype (try bfloat16, float16 or float32)")
    return dtype


class DiffusersEngine:
    """Renders with ``Flux2KleinPipeline``; same request, same seed, same hardware: same image."""

    name = "diffusers"

    def __init__(self, options: DiffusersOptions | None = None, *, pipeline: Any = None) -> None:
        self.options = options or DiffusersOptions()
        self._torch, pipeline_class = _import_stack()
        self.device = _device(self._torch, self.options.device)
        self.dtype = _dtype(self._torch, self.options.dtype, self.device)
        started = time.perf_counter()
        if pipeline is None:
            print(
                f"flux_nb: loading {self.options.model} on {self.device} ({self.dtype})...", file=sys.stderr, flush=True
            )
            pipeline = self._load(pipeline_class)
        self.pipeline = self._place(pipeline)
        self.load_seconds = time.perf_counter() - started
        print(f"flux_nb: {self.options.model} ready in {self.load_seconds:.1f} s", file=sys.stderr, flush=True)
        # One worker: the device runs one request at a time, in arrival order.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flux-nb-gpu")

    def _load(self, pipeline_class: Any) -> Any:
        import diffusers

        # diffusers 0.40 renamed torch_dtype to dtype; 0.37 to 0.39 know only the old name.
        major, minor = (int(part) for part in diffusers.__version__.split(".")[:2])
        dtype_argument = "dtype" if (major, minor) >= (0, 40) else "torch_dtype"
        try:
            return pipeline_class.from_pretrained(self.options.model, **{dtype_argument: self.dtype})
        except (OSError, ValueError) as exc:
            raise EngineUnavailable(
                f"could not load FLUX.2 klein weights from {self.options.model!r}: {exc}. Download them first "
                f"(huggingface-cli download {DEFAULT_MODEL}, about 16 GB) or pass --model /path/to/a/local/folder"
            ) from None

    def _place(self, pipeline: Any) -> Any:
        if self.options.cpu_offload and self.device.startswith("cuda"):
            pipeline.enable_model_cpu_offload()
        else:
            pipeline = pipeline.to(self.device, self.dtype)
        if self.options.compile:
            pipeline.transformer.compile_repeated_blocks(fullgraph=True)
        pipeline.set_progress_bar_config(disable=True)
        return pipeline

    @property
    def distilled(self) -> bool:
        """Step-distilled klein weights run a fixed schedule: 4 steps at guidance 1."""
        return bool(getattr(self.pipeline.config, "is_distilled", True))

    def sampling(self, job: RenderJob) -> tuple[int, float]:
        """Steps and guidance for ``job``: the engine's own for distilled weights, whatever route it came on."""
        if self.distilled:
            return self.options.steps, self.options.guidance
        return int(job.extra.get("steps", self.options.steps)), float(job.extra.get("guidance", self.options.guidance))

    def prompt_tokens(self, prompt: str) -> int:
        """How many tokens the text encoder would be given for ``prompt`` (before it cuts at 512)."""
        tokenizer = self.pipeline.tokenizer
        messages = [{"role": "user", "content": prompt}]
        text = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, enable_thinking=False
        )
        return len(tokenizer(text)["input_ids"])

    def review(self, job: RenderJob) -> list[str]:
        """Refuse what klein cannot take (more than 4 references); warn about what it will change."""
        if len(job.references) > MAX_REFERENCES:
            field = f"input_image_{MAX_REFERENCES + 1}"
            raise JobRefused(
                field,
                f"{len(job.references)} reference images given; the FLUX.2 klein weights behind this server "
                f"take at most {MAX_REFERENCES}",
            )
        warnings = []
        steps, guidance = self.sampling(job)
        asked = {k: job.extra[k] for k in ("steps", "guidance") if k in job.extra}
        if asked and (asked.get("steps", steps), asked.get("guidance", guidance)) != (steps, guidance):
            given = ", ".join(f"{name} {value:g}" for name, value in asked.items())
            warnings.append(f"klein runs {steps} steps at guidance {guidance:g}; the request's {given} not used")
        if self.prompt_tokens(job.prompt) > MAX_PROMPT_TOKENS:
            warnings.append(f"prompt truncated to {MAX_PROMPT_TOKENS} tokens")
        return warnings

    def render(self, job: RenderJob) -> Image.Image:
        """One image; the seed goes through a CPU generator, so it means the same on any device."""
        torch = self._torch
        generator = torch.Generator("cpu").manual_seed(job.seed)
        steps, guidance = self.sampling(job)
        kwargs: dict[str, Any] = {
            "prompt": job.prompt,
            "height": job.height,
            "width": job.width,
            "num_inference_steps": steps,
            "guidance_scale": guidance,
            "generator": generator,
            "output_type": "pil",
        }
        if job.references:
            kwargs["image"] = list(job.references)
        with torch.inference_mode():
            return self.pipeline(**kwargs).images[0]
