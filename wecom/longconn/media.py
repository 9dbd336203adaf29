"""Files and images sent over the long connection: a URL valid five minutes plus a
per-message `aeskey`; the body is AES-256-CBC with IV = key[:16] and 32-byte PKCS#7."""

from __future__ import annotations

import base64
import binascii

import httpx

from wecom.crypto import AES_KEY_BYTES, WeComCryptoError, aes_cbc_decrypt, aes_cbc_encrypt

# WeCom's upload caps top out at 20 MB (files); a download larger than that is refused.
MAX_MEDIA_BYTES = 20 * 1024 * 1024


class MediaError(Exception):
    """The media could not be downloaded or decrypted; the message says which."""


def media_key(aeskey: str) -> bytes:
    """Decode the callback's base64 `aeskey` (padding optional) into the 32-byte AES key."""
    text = aeskey.strip()
    try:
        key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise MediaError("aeskey is not valid base64") from None
    if len(key) != AES_KEY_BYTES:
        raise MediaError(f"aeskey must decode to {AES_KEY_BYTES} bytes, got {len(key)}")
    return key


def media_decrypt(*, data: bytes, aeskey: str) -> bytes:
    try:
        return aes_cbc_decrypt(media_key(aeskey), data)
    except WeComCryptoError:
        raise MediaError("media could not be decrypted with the message's aeskey") from None


def media_encrypt(*, data: bytes, aeskey: str) -> bytes:
    """WeCom's side of `media_decrypt`; the simulator serves media encrypted this way."""
    return aes_cbc_encrypt(media_key(aeskey), data)


async def media_download(
    *,
    url: str,
    aeskey: str,
    max_bytes: int = MAX_MEDIA_BYTES,
    timeout: float = 30.0,
    transport: httpx.AsyncBaseTransport | None = None,
) -> bytes:
    """Fetch the encrypted body behind `url` (streamed, capped at `max_bytes`) and decrypt it.

    `transport` lets tests and private deployments route the request; proxies from the
    environment are ignored, as for every other WeCom call here.
    """
    async with httpx.AsyncClient(
        timeout=timeout, transport=transport, trust_env=False, follow_redirects=False
    ) as client:
        try:
            async with client.stream("GET", url) as response:
                if response.status_code != httpx.codes.OK:
                    raise MediaError(f"media download answered HTTP {response.status_code}")
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > max_bytes:
                        raise MediaError(f"media is larger than {max_bytes} bytes")
                    chunks.append(chunk)
        except httpx.HTTPError as exc:
            raise MediaError(f"media download failed: {exc.__class__.__name__}") from None
    return media_decrypt(data=b"".join(chunks), aeskey=aeskey)
