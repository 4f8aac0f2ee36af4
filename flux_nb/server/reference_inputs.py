"""Reference images of a submit: base64 (raw or a data: URI) or an http(s) URL the server fetches.

Each is measured from its header before anything is decoded, and decoded on a worker thread within the
server's reference memory (``ServerConfig.reference_memory``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import warnings

import httpx
from fastapi import HTTPException
from PIL import Image

from flux_nb.errors import ValidationError
from flux_nb.images import open_image
from flux_nb.server.bfl_errors import APIError
from flux_nb.server.config import ServerConfig
from flux_nb.server.memory import ReferenceMemory, decoded_bytes
from flux_nb.server.outbound import OutboundRefused, Resolver, checked_request, logger, system_resolver

# What the server reads as reference images: the formats the API takes.
FORMATS = ("PNG", "JPEG", "WEBP")


def field_error(field: str, message: str) -> HTTPException:
    """A 422 in FastAPI's own shape, for checks made after parsing (reference images)."""
    return HTTPException(422, detail=[{"loc": ["body", field], "msg": message, "type": "value_error"}])


def fetch_failed(field: str, config: ServerConfig) -> HTTPException:
    """The one answer for every failed fetch: it tells nothing about the target (refused, down, 404, slow, big)."""
    megabytes = config.fetch_max_bytes / 2**20
    return field_error(
        field,
        f"could not fetch the image at this URL: the server fetches only public addresses it may reach, "
        f"answering 200 within {config.fetch_timeout:g} s with at most {megabytes:g} MB "
        "(or send the image as base64)",
    )


async def load_references(
    given: list[tuple[str, str]], config: ServerConfig, memory: ReferenceMemory, resolver: Resolver = system_resolver
) -> tuple[list[Image.Image], int]:
    """Decode a submit's reference images (``(field, value)`` pairs); returns them and the bytes reserved for them.

    Each image is measured from its header first: one over ``reference_max_pixels`` is refused (422),
    and the memory decoding takes is reserved in ``memory`` (429 when the server holds too much, 422
    when these images alone are over the budget). Decoding then runs on a worker thread. The caller
    gives the reserved bytes back once the images are no longer needed.
    """
    if not given:
        return [], 0
    data = [await reference_bytes(field, value, config, resolver) for field, value in given]
    sizes = [measure(field, blob, config) for (field, _), blob in zip(given, data, strict=True)]
    need = decoded_bytes(sizes)
    if need > memory.limit:
        raise field_error(
            given[0][0],
            f"these reference images take {need / 2**20:.0f} MB to decode, over this server's "
            f"reference memory of {memory.limit / 2**20:.0f} MB; send smaller images",
        )
    if not memory.take(need):
        retry = {"Retry-After": f"{config.retry_after:g}"}
        raise APIError(429, "the server holds too many reference images right now; retry shortly", retry)
    try:
        images = await asyncio.to_thread(decode_all, given, data)
    except BaseException:
        memory.give_back(need)
        raise
    return images, need


async def reference_bytes(field: str, value: str, config: ServerConfig, resolver: Resolver) -> bytes:
    """The bytes of a reference image given as base64 (raw or data: URI), or fetched from an http(s) URL."""
    if value.startswith(("http://", "https://")):
        return await fetch_reference(field, value, config, resolver)
    return await asyncio.to_thread(from_base64, field, value)


def from_base64(field: str, value: str) -> bytes:
    payload = value.split(",", 1)[1] if value.startswith("data:") else value
    payload = "".join(payload.split())  # line-wrapped base64 (as `base64` prints it) is still base64
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise field_error(field, "not base64 image data nor an http(s) URL") from None


def measure(field: str, data: bytes, config: ServerConfig) -> tuple[int, int]:
    """An image's width and height from its header alone (nothing is decoded); 422 when over the pixel limit.

    Only the formats the API takes are read: their headers give the size that decoding allocates.
    """
    limit = f"this server takes reference images of at most {config.reference_max_pixels / 2**20:g} MP; downscale it"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=FORMATS) as image:
                width, height = image.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise field_error(field, f"the image is too large: {limit}") from None
    except Image.UnidentifiedImageError:
        raise field_error(field, "the data is not a PNG, JPEG or WebP image") from None
    except Exception as exc:
        raise field_error(field, f"the data is not a readable image ({type(exc).__name__}: {exc})") from None
    if width * height > config.reference_max_pixels:
        raise field_error(field, f"the image is {width}x{height} ({width * height / 2**20:.1f} MP), too large: {limit}")
    return width, height


def decode_all(given: list[tuple[str, str]], data: list[bytes]) -> list[Image.Image]:
    """Decode measured images to RGB (on a worker thread); 422 naming the field of one that does not decode."""
    images = []
    for (field, _), blob in zip(given, data, strict=True):
        try:
            images.append(open_image(blob, field).convert("RGB"))
        except ValidationError as exc:
            raise field_error(field, str(exc)) from None
    return images


async def fetch_reference(field: str, url: str, config: ServerConfig, resolver: Resolver = system_resolver) -> bytes:
    """GET a reference image from a checked address, with a size limit and one deadline for the whole fetch.

    ``fetch_timeout`` bounds every read and also the fetch as a whole (resolution included): a host
    trickling a byte now and then cannot hold a submit open past it. Redirects count as failures.
    """
    try:
        async with asyncio.timeout(config.fetch_timeout):
            target = await config.outbound_policy().check(url, resolver)
            client = httpx.AsyncClient(timeout=config.fetch_timeout, follow_redirects=False, trust_env=False)
            async with client:
                response = await client.send(checked_request(client, "GET", target), stream=True)
                try:
                    if response.status_code != 200:
                        raise OutboundRefused(f"{url} answered HTTP {response.status_code}")
                    return await read_limited(response, config.fetch_max_bytes, url)
                finally:
                    await response.aclose()
    except OutboundRefused as exc:
        logger.info("reference image refused: %s", exc)
    except TimeoutError:
        logger.info("reference image at %s: not fetched within %g s", url, config.fetch_timeout)
    except httpx.HTTPError as exc:
        logger.info("reference image at %s: %s", url, type(exc).__name__)
    raise fetch_failed(field, config)


async def read_limited(response: httpx.Response, limit: int, url: str) -> bytes:
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise OutboundRefused(f"{url} sent over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
