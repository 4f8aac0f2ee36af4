"""Reference images of a submit: base64 (raw or a data: URI) or an http(s) URL the server fetches."""

from __future__ import annotations

import asyncio
import base64
import binascii

import httpx
from fastapi import HTTPException
from PIL import Image

from flux_nb.errors import ValidationError
from flux_nb.images import open_image
from flux_nb.server.config import ServerConfig
from flux_nb.server.outbound import OutboundRefused, Resolver, checked_request, logger, system_resolver


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


async def load_reference(
    field: str, value: str, config: ServerConfig, resolver: Resolver = system_resolver
) -> Image.Image:
    """Decode a reference image given as base64 (raw or data: URI) or fetch it from an http(s) URL."""
    if value.startswith(("http://", "https://")):
        data = await fetch_reference(field, value, config, resolver)
    else:
        payload = value.split(",", 1)[1] if value.startswith("data:") else value
        payload = "".join(payload.split())  # line-wrapped base64 (as `base64` prints it) is still base64
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise field_error(field, "not base64 image data nor an http(s) URL") from None
    try:
        return open_image(data, field).convert("RGB")
    except ValidationError as exc:
        raise field_error(field, str(exc)) from None


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
