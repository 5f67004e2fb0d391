"""Secrets mxd must read back to use (webhook signing secrets: Standard Webhooks signs with the secret
itself, so it cannot be stored as a hash) are sealed at rest with AES-256-GCM under a key of their own,
DATA_DIR/secrets.key (mode 0600, made on first use). A copy of the store alone (a backup, a dump, a
replica) then holds no usable secret. Nodes sharing one PostgreSQL store need the same key file, as
they need the same DKIM keys.

Each sealed value is bound to what it belongs to (the associated data, e.g. "webhook whk_..."), so
a value copied to another row does not open there.
"""
from __future__ import annotations

import base64
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mxd import keys

PREFIX = "sealed:v1:"
KEY_FILE = "secrets.key"
_NONCE = 12


class SecretError(Exception):
    """A sealed value does not open: another key sealed it, or it was altered."""


class SecretBox:
    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def seal(self, plain: str, context: str) -> str:
        nonce = os.urandom(_NONCE)
        sealed = nonce + self._aead.encrypt(nonce, plain.encode("utf-8"), context.encode("utf-8"))
        return PREFIX + base64.urlsafe_b64encode(sealed).decode("ascii").rstrip("=")

    def open(self, stored: str, context: str) -> str:
        """The secret in a stored value; a value from before secrets were sealed is returned as it is."""
        return open_value(stored, context, self)


def is_sealed(stored: str | None) -> bool:
    return bool(stored) and stored.startswith(PREFIX)     # type: ignore[union-attr]


def open_value(stored: str, context: str, box: SecretBox | None) -> str:
    if not is_sealed(stored):
        return stored
    if box is None:
        raise SecretError(f"{context}: the secret is sealed and no key was given")
    text = stored[len(PREFIX):]
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        return box._aead.decrypt(raw[:_NONCE], raw[_NONCE:], context.encode("utf-8")).decode("utf-8")
    except (InvalidTag, ValueError) as exc:
        raise SecretError(f"{context}: the secret does not open with {KEY_FILE} (sealed with another key, "
                          f"or altered): {type(exc).__name__}") from None


_boxes: dict[str, SecretBox] = {}


def for_dir(data_dir: str | os.PathLike) -> SecretBox:
    """The box of a data directory, its key file made on first use (cached per directory)."""
    path = str(Path(data_dir) / KEY_FILE)
    box = _boxes.get(path)
    if box is None:
        box = _boxes[path] = SecretBox(keys.ensure_secret_key(Path(path)))
    return box
