"""Signed URLs: an HMAC over path and expiry, keyed from SECRET_KEY (reused by later routes)."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from gateway.security.signing import SignatureError, SignatureExpired, UrlSigner, url_path

NOW = 1_800_000_000.0


def parts(url: str) -> tuple[str, str, str]:
    split = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(split.query).items()}
    return split.path, query["expires"], query["signature"]


def test_a_signed_url_verifies_until_it_expires_and_on_every_replica() -> None:
    signed = UrlSigner("k").sign("https://gw.example/", "/files/runs/1/a.pdf", ttl_s=60, now=NOW)

    assert signed.url.startswith("https://gw.example/files/runs/1/a.pdf?expires=1800000060&")
    assert signed.expires_at.timestamp() == NOW + 60
    path, expires, signature = parts(signed.url)
    UrlSigner("k").verify(path, expires, signature, now=NOW + 59)  # another replica, same key
    with pytest.raises(SignatureExpired, match="expired"):
        UrlSigner("k").verify(path, expires, signature, now=NOW + 60)


@pytest.mark.parametrize(
    "change",
    ["path", "expires", "signature", "key", "purpose", "missing", "garbage-expiry"],
)
def test_any_change_is_refused(change: str) -> None:
    signed = UrlSigner("k").sign("https://gw.example", "/files/a", ttl_s=60, now=NOW)
    path, expires, signature = parts(signed.url)
    signer = UrlSigner("k")
    args: tuple[str, str | None, str | None] = (path, expires, signature)
    if change == "path":
        args = ("/files/b", expires, signature)
    elif change == "expires":
        args = (path, str(int(expires) + 1), signature)
    elif change == "signature":
        args = (path, expires, signature[:-1] + ("a" if signature[-1] != "a" else "b"))
    elif change == "key":
        signer = UrlSigner("other")
    elif change == "purpose":
        signer = UrlSigner("k", purpose="job-packages")
    elif change == "missing":
        args = (path, None, None)
    else:
        args = (path, "12x", signature)
    with pytest.raises(SignatureError) as caught:
        signer.verify(*args, now=NOW)
    assert not isinstance(caught.value, SignatureExpired)


def test_a_forged_signature_on_an_expired_url_is_invalid_not_expired() -> None:
    with pytest.raises(SignatureError, match="does not match"):
        UrlSigner("k").verify("/files/a", "1", "0" * 64, now=NOW)


def test_an_empty_secret_cannot_sign() -> None:
    with pytest.raises(ValueError, match="secret"):
        UrlSigner("")


def test_url_path_encodes_each_segment() -> None:
    assert url_path("v0", "a b", "c/d") == "/v0/a%20b/c%2Fd"
