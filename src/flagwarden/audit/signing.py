"""Ed25519 signatures for the audit log: keys, signing, checking, key generation.

A record's ``signature`` is the Ed25519 signature of its ``hash`` (the 64 hex characters, as
ASCII bytes), stored as 128 hex digits. The hash covers the record's content and the hash of
the record before it, so a signature vouches for the record and for the chain that leads to
it. A file's manifest (an archive or an export) is signed over its canonical JSON without the
``signature`` key (sorted keys, no spaces). Whoever can write to the database can recompute
hashes; only the holder of the private key can sign them.

Keys: the private key (``audit.signing_key``) is PEM text (PKCS8), the path of a PEM file, or
base64 of the raw 32-byte seed (handy in an environment variable); the public key
(``audit.public_key``, ``--public-key``) is PEM text, the path of a PEM file, or base64 of the
raw 32 bytes. No message ever carries the private key.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from flagwarden.config import DEFAULT_CONFIG_NAME, Settings, looks_secret
from flagwarden.errors import ConfigError

__all__ = [
    "KEY_ENV",
    "PublicKey",
    "Signer",
    "fingerprint",
    "generate",
    "load_private_key",
    "load_public_key",
    "manifest_signature_ok",
    "public_key_from_settings",
    "seed_base64",
    "signature_ok",
    "signer_from_settings",
    "write_keypair",
]

KEY_ENV = "FLAGWARDEN_AUDIT_KEY"  # what the docs and keygen suggest for audit.signing_key
PublicKey = Ed25519PublicKey
_PRIVATE_EXPECTED = (
    "expected an Ed25519 private key: PEM text (PKCS8, '-----BEGIN PRIVATE KEY-----'), the "
    "path of such a file, or base64 of the raw 32-byte seed"
)
_PUBLIC_EXPECTED = (
    "expected an Ed25519 public key: PEM text ('-----BEGIN PUBLIC KEY-----'), the path of "
    "such a file, or base64 of the raw 32 bytes"
)


class _Problem(Exception):
    """What is wrong with a key, in words that never quote it."""


def fingerprint(key: Ed25519PublicKey) -> str:
    """The SHA-256 of the raw public key, first 16 hex digits: which key, in messages."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


class Signer:
    """Signs record hashes and manifests with one private key (never shown by ``repr``)."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self.public_key = key.public_key()
        self.fingerprint = fingerprint(self.public_key)

    def __repr__(self) -> str:
        return f"Signer(Ed25519, key {self.fingerprint})"

    def sign(self, digest: str) -> str:
        """The signature of a record's hash, as 128 hex digits."""
        return self._key.sign(digest.encode("ascii")).hex()

    def sign_manifest(self, manifest: Mapping[str, Any]) -> str:
        return self._key.sign(_manifest_payload(manifest)).hex()


def _manifest_payload(manifest: Mapping[str, Any]) -> bytes:
    body = {k: v for k, v in manifest.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _verify(key: Ed25519PublicKey, signature: Any, payload: bytes) -> bool:
    if not isinstance(signature, str):
        return False
    try:
        key.verify(bytes.fromhex(signature), payload)
    except (ValueError, InvalidSignature):
        return False
    return True


def signature_ok(key: Ed25519PublicKey, digest: str, signature: str | None) -> bool:
    """Whether ``signature`` is ``key``'s signature of the record hash ``digest``."""
    return isinstance(digest, str) and _verify(key, signature, digest.encode("ascii", "replace"))


def manifest_signature_ok(key: Ed25519PublicKey, manifest: Mapping[str, Any]) -> bool:
    """Whether the manifest's ``signature`` is ``key``'s signature of the rest of it."""
    return _verify(key, manifest.get("signature"), _manifest_payload(manifest))


# -- loading keys ----------------------------------------------------------------------------


def _raw32(text: str) -> bytes | None:
    """The 32 bytes a base64 text (standard or URL-safe alphabet) holds, else None."""
    if len(text) not in (43, 44):
        return None
    padded = (text + "=" * (-len(text) % 4)).encode()
    for altchars in (None, b"-_"):
        with contextlib.suppress(binascii.Error, ValueError):
            raw = base64.b64decode(padded, altchars=altchars, validate=True)
            if len(raw) == 32:
                return raw
    return None


def _file(text: str, base_dir: Path | None) -> Path | None:
    """The file ``text`` names (relative to ``base_dir``), if it is one."""
    if "\n" in text or len(text) > 4096:
        return None
    path = Path(text).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    try:
        return path if path.is_file() else None
    except (OSError, ValueError):
        return None


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise _Problem(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None


def _private(text: str, base_dir: Path | None, where: str = "the value") -> Ed25519PrivateKey:
    text = text.strip()
    if text.startswith("-----BEGIN"):
        if "PRIVATE KEY-----" not in text.split("\n", 1)[0]:
            raise _Problem(f"{where} is a PEM but not a private key; {_PRIVATE_EXPECTED}")
        load = (
            serialization.load_ssh_private_key  # ssh-keygen -t ed25519
            if "OPENSSH PRIVATE KEY" in text.split("\n", 1)[0]
            else serialization.load_pem_private_key
        )
        try:
            key = load(text.encode(), password=None)
        except TypeError:
            raise _Problem(
                f"{where} is an encrypted PEM: flagwarden needs the key unencrypted (keep it "
                "in a file only the service can read, or in a secret store)"
            ) from None
        except (ValueError, UnsupportedAlgorithm):
            raise _Problem(
                f"{where} is not a readable PEM private key; {_PRIVATE_EXPECTED}"
            ) from None
        if not isinstance(key, Ed25519PrivateKey):
            raise _Problem(f"{where} is a {type(key).__name__} key, not Ed25519")
        return key
    path = _file(text, base_dir) if where == "the value" else None
    if path is not None:
        return _private(_read(path).decode("utf-8", "replace"), None, f"the file {path}")
    raw = _raw32(text)
    if raw is None:
        shown = "" if where == "the value" else f" ({where})"
        raise _Problem(f"{_PRIVATE_EXPECTED}{shown} (the value is not shown: it may be a secret)")
    return Ed25519PrivateKey.from_private_bytes(raw)


def _public(text: str, base_dir: Path | None, where: str = "the value") -> Ed25519PublicKey:
    text = text.strip()
    if text.startswith("-----BEGIN"):
        if "PRIVATE KEY" in text.split("\n", 1)[0]:
            raise _Problem(
                f"{where} is a private key: give the public key (keygen writes it to PREFIX.pub)"
            )
        try:
            key = serialization.load_pem_public_key(text.encode())
        except (ValueError, UnsupportedAlgorithm):
            raise _Problem(
                f"{where} is not a readable PEM public key; {_PUBLIC_EXPECTED}"
            ) from None
        if not isinstance(key, Ed25519PublicKey):
            raise _Problem(f"{where} is a {type(key).__name__} key, not Ed25519")
        return key
    path = _file(text, base_dir) if where == "the value" else None
    if path is not None:
        return _public(_read(path).decode("utf-8", "replace"), None, f"the file {path}")
    raw = _raw32(text)
    if raw is None:
        raise _Problem(f"{_shown(text) if where == 'the value' else where}; {_PUBLIC_EXPECTED}")
    return Ed25519PublicKey.from_public_bytes(raw)


def _shown(text: str) -> str:
    """``no such file: TEXT``, unless TEXT could be key material (never echoed)."""
    if len(text) > 300 or "\n" in text or looks_secret(text) or _raw32(text) is not None:
        return "not a file (the value is not shown: it may be a secret)"
    return f"no such file: {text}"


def load_private_key(
    value: str,
    *,
    base_dir: Path | None = None,
    file: Path | str | None = None,
    field: str = "audit.signing_key",
) -> Ed25519PrivateKey:
    """The private key ``value`` holds or names; :class:`~flagwarden.errors.ConfigError`
    naming ``field`` (never the value) when it is not one."""
    try:
        return _private(value, base_dir)
    except _Problem as exc:
        raise ConfigError(file or DEFAULT_CONFIG_NAME, field, str(exc)) from None


def load_public_key(
    value: str | Path,
    *,
    base_dir: Path | None = None,
    file: Path | str | None = None,
    field: str | None = "audit.public_key",
) -> Ed25519PublicKey:
    """The public key ``value`` holds or names (a file, relative to ``base_dir``)."""
    try:
        return _public(str(value), base_dir)
    except _Problem as exc:
        raise ConfigError(file or DEFAULT_CONFIG_NAME, field, str(exc)) from None


def signer_from_settings(settings: Settings) -> Signer | None:
    """The signer ``audit.signing_key`` configures, or None (raises ConfigError)."""
    secret = settings.config.audit.signing_key
    if secret is None:
        return None
    where = settings.source or DEFAULT_CONFIG_NAME
    return Signer(
        load_private_key(secret.get_secret_value(), base_dir=settings.base_dir, file=where)
    )


def public_key_from_settings(settings: Settings) -> Ed25519PublicKey | None:
    """The key to check signatures with: ``audit.public_key``, else the public half of
    ``audit.signing_key``, else None (raises ConfigError for a key that does not load)."""
    path = settings.config.audit.public_key
    if path is not None:
        return load_public_key(
            path, base_dir=settings.base_dir, file=settings.source or DEFAULT_CONFIG_NAME
        )
    signer = signer_from_settings(settings)
    return signer.public_key if signer is not None else None


# -- generating keys -------------------------------------------------------------------------


def generate() -> tuple[Ed25519PrivateKey, bytes, bytes]:
    """A new key: (the key, its private PEM (PKCS8), its public PEM)."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return key, private, public


def seed_base64(key: Ed25519PrivateKey) -> str:
    """The raw 32-byte seed in base64: the one-line form for an environment variable."""
    raw = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return base64.b64encode(raw).decode()


def _create(path: Path, content: bytes, mode: int) -> None:
    """Write a new file (never replacing one) with ``mode``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, content)
        os.fsync(fd)
    finally:
        os.close(fd)


def write_keypair(
    prefix: Path, *, private: bool = True
) -> tuple[Ed25519PrivateKey, Path | None, Path]:
    """A new key pair: ``PREFIX.key`` (private PEM, mode 0600; not written when ``private``
    is False) and ``PREFIX.pub`` (public PEM). Existing files are never replaced
    (:class:`FileExistsError`)."""
    key, private_pem, public_pem = generate()
    key_path = prefix.with_name(prefix.name + ".key") if private else None
    pub_path = prefix.with_name(prefix.name + ".pub")
    for path in (key_path, pub_path):
        if path is not None and path.exists():
            raise FileExistsError(f"{path} already exists: a key is never overwritten")
    prefix.parent.mkdir(parents=True, exist_ok=True)
    if key_path is not None:
        _create(key_path, private_pem, 0o600)
    try:
        _create(pub_path, public_pem, 0o644)
    except BaseException:
        if key_path is not None:
            with contextlib.suppress(OSError):
                key_path.unlink()
        raise
    return key, key_path, pub_path
