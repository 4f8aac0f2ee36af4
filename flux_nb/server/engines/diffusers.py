"""The diffusers engine: the open FLUX.2 [klein] weights behind the local server.

Needs ``pip install 'flux-nb[local]'`` (torch, diffusers, transformers, accelerate); the
base install never imports torch. The model loads once; requests run one at a time, in
the order they arrived, on a single worker thread that owns the device.
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from flux_nb.server.engines import checkpoints
from flux_nb.server.engines.base import DETAILS_KEY, JobRefused, RenderJob, unserved
from flux_nb.server.engines.placement import EngineUnavailable, place, set_attention
from flux_nb.server.engines.prompt_cache import PromptCache

__all__ = ["DiffusersEngine", "DiffusersOptions", "EngineUnavailable"]

MAX_REFERENCES = 4  # klein takes at most 4 reference images
MIN_REFERENCE_SIDE = 64  # the pipeline's check_image_input refuses smaller references
MAX_REFERENCE_ASPECT = 8  # ... and those more elongated than 8:1
MAX_PROMPT_TOKENS = 512  # the text encoder's window; the pipeline cuts longer prompts
TEXT_ENCODER_LAYERS = (9, 18, 27)  # the encoder's hidden states the pipeline stacks
DEFAULT_MODEL = checkpoints.DEFAULT_WEIGHTS
DISTILLED_SAMPLING = (4, 1.0)  # step-distilled klein: 4 steps, no guidance pass
BASE_SAMPLING = (50, 4.0)  # undistilled (base) klein: the pipeline's own defaults, with CFG
INSTALL_HINT = (
    "install the local extra: pip install torch (a CUDA build for GPUs, see pytorch.org), "
    "then pip install 'flux-nb[local]'"
)


@dataclass(frozen=True)
class DiffusersOptions:
    """How to load and run the pipelines. Steps and guidance default to what the weights want."""

    model: str = DEFAULT_MODEL  # klein-4B's weights, for the flux-2-klein-4b route
    model_for: dict[str, str] = field(default_factory=dict)  # more routes: route -> Hub id or folder
    device: str | None = None  # cuda when available, else cpu
    dtype: str | None = None  # bfloat16 on a GPU, float32 on the CPU
    cpu_offload: bool = False
    compile: bool = False
    attention: str | None = None  # a diffusers attention backend, e.g. flash, _flash_3, sage, _native_cudnn
    steps: int | None = None  # default: 4 for distilled weights, 50 for base weights
    guidance: float | None = None  # default: 1.0 for distilled weights, 4.0 for base weights
    prompt_cache: int = 32  # prompt encodings kept (0: the pipeline encodes every prompt itself)


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
    """Renders with ``Flux2KleinPipeline``; same request, same seed, same hardware: same image.

    Each route is rendered by the weights named for it (``routes``); other routes are refused.
    """

    name = "diffusers"

    def __init__(self, options: DiffusersOptions | None = None, *, pipeline: Any = None) -> None:
        self.options = options or DiffusersOptions()
        self.routes = checkpoints.route_weights(self.options.model, self.options.model_for)
        self.prompts = PromptCache(self.options.prompt_cache)
        self._torch, pipeline_class = _import_stack()
        self.device = _device(self._torch, self.options.device)
        self.dtype = _dtype(self._torch, self.options.dtype, self.device)
        started = time.perf_counter()
        loaded = {}
        for weights in dict.fromkeys(self.routes.values()):
            given = pipeline if weights == self.options.model else None
            loaded[weights] = self._prepare(given if given is not None else self._load(pipeline_class, weights))
        self.pipeline = loaded.pop(self.options.model)  # klein-4B's
        self._others = loaded
        if self.options.compile:
            self.warm_up()
        self.load_seconds = time.perf_counter() - started
        print(
            f"flux_nb: {checkpoints.held(self.routes)} ready in {self.load_seconds:.1f} s", file=sys.stderr, flush=True
        )
        # One worker: the device runs one request at a time, in arrival order.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flux-nb-gpu")

    def _load(self, pipeline_class: Any, weights: str) -> Any:
        import diffusers

        print(f"flux_nb: loading {weights} on {self.device} ({self.dtype})...", file=sys.stderr, flush=True)
        # diffusers 0.40 renamed torch_dtype to dtype; 0.37 to 0.39 know only the old name.
        major, minor = (int(part) for part in diffusers.__version__.split(".")[:2])
        dtype_argument = "dtype" if (major, minor) >= (0, 40) else "torch_dtype"
        try:
            return pipeline_class.from_pretrained(weights, **{dtype_argument: self.dtype})
        except (OSError, ValueError) as exc:
            raise EngineUnavailable(
                f"could not load FLUX.2 klein weights from {weights!r}: {exc}. Download them first "
                f"(huggingface-cli download {DEFAULT_MODEL}, about 16 GB) or pass --model /path/to/a/local/folder"
            ) from None

    def _prepare(self, pipeline: Any) -> Any:
        options = self.options
        pipeline = place(pipeline, self.device, self.dtype, cpu_offload=options.cpu_offload, compile=options.compile)
        if options.attention is not None:
            set_attention(pipeline, options.attention)
        return pipeline

    def warm_up(self) -> None:
        """One pass per set of weights at the pipeline's default size (1024x1024 for klein), to latents: the
        transformer compiles now, not on the first request."""
        for pipeline in (self.pipeline, *self._others.values()):
            steps, guidance = self.defaults(pipeline)
            generator = self._torch.Generator("cpu").manual_seed(0)
            with self._torch.inference_mode():
                pipeline(
                    prompt="warm-up",
                    num_inference_steps=steps,
                    guidance_scale=guidance,
                    generator=generator,
                    output_type="latent",
                )

    def pipeline_for(self, route: str) -> Any:
        """The pipeline of the weights that serve ``route``; JobRefused when none here do."""
        if refusal := unserved(self, route):
            raise JobRefused("model", refusal)
        weights = self.routes[route]
        return self.pipeline if weights == self.options.model else self._others[weights]

    def defaults(self, pipeline: Any) -> tuple[int, float]:
        """Steps and guidance for ``pipeline``'s weights: the options', else what distilled or base weights want."""
        steps, guidance = DISTILLED_SAMPLING if distilled(pipeline) else BASE_SAMPLING
        steps = self.options.steps if self.options.steps is not None else steps
        return steps, self.options.guidance if self.options.guidance is not None else guidance

    def sampling(self, job: RenderJob) -> tuple[int, float]:
        """Steps and guidance for ``job``: fixed for distilled weights; base weights take the request's."""
        pipeline = self.pipeline_for(job.model)
        steps, guidance = self.defaults(pipeline)
        if distilled(pipeline):
            return steps, guidance
        return int(job.extra.get("steps", steps)), float(job.extra.get("guidance", guidance))

    def prompt_tokens(self, prompt: str, route: str = checkpoints.DEFAULT_ROUTE) -> int:
        """How many tokens ``route``'s text encoder would be given for ``prompt`` (before it cuts at 512)."""
        tokenizer = self.pipeline_for(route).tokenizer
        messages = [{"role": "user", "content": prompt}]
        text = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, enable_thinking=False
        )
        return len(tokenizer(text)["input_ids"])

    def review(self, job: RenderJob) -> list[str]:
        """Refuse what the pipeline would refuse (route, references); warn about what it will change."""
        self.pipeline_for(job.model)
        check_references(job.references)
        warnings = []
        steps, guidance = self.sampling(job)
        asked = {k: job.extra[k] for k in ("steps", "guidance") if k in job.extra}
        if asked and (asked.get("steps", steps), asked.get("guidance", guidance)) != (steps, guidance):
            given = ", ".join(f"{name} {value:g}" for name, value in asked.items())
            warnings.append(f"klein runs {steps} steps at guidance {guidance:g}; the request's {given} not used")
        if self.prompt_tokens(job.prompt, job.model) > MAX_PROMPT_TOKENS:
            warnings.append(f"prompt truncated to {MAX_PROMPT_TOKENS} tokens")
        return warnings

    def encoded(self, weights: str, pipeline: Any, prompt: str) -> Any:
        """``prompt`` through the text encoder of ``weights``, once per (weights, prompt, encoder settings)."""
        key = (weights, prompt, MAX_PROMPT_TOKENS, TEXT_ENCODER_LAYERS)

        def encode() -> Any:
            embeds, _ = pipeline.encode_prompt(
                prompt=prompt, max_sequence_length=MAX_PROMPT_TOKENS, text_encoder_out_layers=TEXT_ENCODER_LAYERS
            )
            return embeds

        return self.prompts.get(key, encode)

    def render(self, job: RenderJob) -> Image.Image:
        """One image; the seed goes through a CPU generator, so it means the same on any device."""
        torch = self._torch
        pipeline = self.pipeline_for(job.model)
        generator = torch.Generator("cpu").manual_seed(job.seed)
        steps, guidance = self.sampling(job)
        kwargs: dict[str, Any] = {
            "height": job.height,
            "width": job.width,
            "num_inference_steps": steps,
            "guidance_scale": guidance,
            "generator": generator,
            "output_type": "pil",
            "max_sequence_length": MAX_PROMPT_TOKENS,
            "text_encoder_out_layers": TEXT_ENCODER_LAYERS,
        }
        if job.references:
            kwargs["image"] = list(job.references)
        weights = self.routes[job.model]
        with torch.inference_mode():
            if self.prompts.size:
                kwargs["prompt_embeds"] = self.encoded(weights, pipeline, job.prompt)
                if guidance > 1 and not distilled(pipeline):  # the pipeline's guidance pass: prompt ""
                    kwargs["negative_prompt_embeds"] = self.encoded(weights, pipeline, "")
            else:
                kwargs["prompt"] = job.prompt
            image = pipeline(**kwargs).images[0]
        image.info[DETAILS_KEY] = {"weights": weights}
        return image


def distilled(pipeline: Any) -> bool:
    """Whether ``pipeline`` holds step-distilled weights (its config says; base weights run many steps with CFG)."""
    return bool(getattr(pipeline.config, "is_distilled", True))


def check_references(references: tuple[Image.Image, ...]) -> None:
    """Refuse references the pipeline would refuse: more than 4, a side under 64 px, an aspect over 8:1."""
    if len(references) > MAX_REFERENCES:
        raise JobRefused(
            f"input_image_{MAX_REFERENCES + 1}",
            f"{len(references)} reference images given; the FLUX.2 klein weights behind this server "
            f"take at most {MAX_REFERENCES}",
        )
    for index, reference in enumerate(references):
        field_name = "input_image" if index == 0 else f"input_image_{index + 1}"
        width, height = reference.size
        if min(width, height) < MIN_REFERENCE_SIDE:
            raise JobRefused(
                field_name,
                f"reference image is {width}x{height}; klein needs both sides of at least {MIN_REFERENCE_SIDE} px",
            )
        if max(width / height, height / width) > MAX_REFERENCE_ASPECT:
            raise JobRefused(
                field_name,
                f"reference image is {width}x{height}; FLUX.2 klein takes aspect ratios up to {MAX_REFERENCE_ASPECT}:1",
            )
