"""KeyRing: AES-256-GCM round trip, rotation, tamper detection, key-file safety, no key leaks."""

from __future__ import annotations

import base64
import os
import pickle
import stat
from pathlib import Path

import pytest

from jupyter_offline_token.crypto import KeyRing
from jupyter_offline_token.errors import DecryptionError, VaultError

AAD = b"token:abc:alice:refresh"


def _b64url(raw: bytes, *, pad: bool = False) -> str:
    text = base64.urlsafe_b64encode(raw).decode()
    return text if pad else text.rstrip("=")


def test_round_trip_and_fresh_nonce_per_encryption() -> None:
    ring = KeyRing([os.urandom(32)])
    key_id, nonce, ct = ring.encrypt(b"refresh-token-value", AAD)
    assert key_id == ring.primary_key_id
    assert len(nonce) == 12
    assert b"refresh-token-value" not in ct
    assert ring.decrypt(key_id, nonce, ct, AAD) == b"refresh-token-value"
    _, nonce2, ct2 = ring.encrypt(b"refresh-token-value", AAD)
    assert nonce2 != nonce and ct2 != ct


def test_key_id_is_sha256_prefix_and_dupes_dropped() -> None:
    import hashlib

    raw = os.urandom(32)
    ring = KeyRing([raw, raw, os.urandom(32), raw])
    assert ring.primary_key_id == hashlib.sha256(raw).hexdigest()[:16]
    assert len(ring.key_ids) == 2


def test_first_key_encrypts_any_key_decrypts_after_rotation() -> None:
    old, new = os.urandom(32), os.urandom(32)
    before = KeyRing([old])
    key_id, nonce, ct = before.encrypt(b"secret", AAD)

    rotated = KeyRing([new, old])
    assert rotated.primary_key_id != key_id
    assert rotated.decrypt(key_id, nonce, ct, AAD) == b"secret"
    new_id, new_nonce, new_ct = rotated.encrypt(b"secret", AAD)
    assert new_id == KeyRing([new]).primary_key_id
    with pytest.raises(DecryptionError):
        before.decrypt(new_id, new_nonce, new_ct, AAD)


def _flip(data: bytes, index: int = 0) -> bytes:
    out = bytearray(data)
    out[index] ^= 0x01
    return bytes(out)


def test_tampering_is_detected() -> None:
    other = os.urandom(32)
    ring = KeyRing([os.urandom(32), other])
    key_id, nonce, ct = ring.encrypt(b"secret", AAD)
    other_id = KeyRing([other]).primary_key_id

    with pytest.raises(DecryptionError):
        ring.decrypt(key_id, nonce, _flip(ct), AAD)
    with pytest.raises(DecryptionError):
        ring.decrypt(key_id, nonce, _flip(ct, -1), AAD)  # the tag
    with pytest.raises(DecryptionError):
        ring.decrypt(key_id, _flip(nonce), ct, AAD)
    with pytest.raises(DecryptionError):
        ring.decrypt(key_id, nonce[:8], ct, AAD)
    with pytest.raises(DecryptionError):
        ring.decrypt(key_id, nonce, ct, b"token:abc:mallory:refresh")
    # The key id is bound too: naming another key in the ring does not help.
    with pytest.raises(DecryptionError):
        ring.decrypt(other_id, nonce, ct, AAD)
    with pytest.raises(DecryptionError, match="no key with id 0000000000000000"):
        ring.decrypt("0000000000000000", nonce, ct, AAD)
    assert ring.decrypt(key_id, nonce, ct, AAD) == b"secret"


def test_from_config_accepts_base64url_padded_unpadded_and_standard() -> None:
    # Chosen so the standard alphabet needs '+' and '/' characters.
    raw = bytes([0xFB, 0xFF] * 16)
    standard = base64.b64encode(raw).decode()
    assert "+" in standard or "/" in standard
    ids = {
        KeyRing.from_config([text]).primary_key_id
        for text in (_b64url(raw), _b64url(raw, pad=True), standard, f"  {_b64url(raw)}\n")
    }
    assert ids == {KeyRing([raw]).primary_key_id}


@pytest.mark.parametrize(
    "bad",
    [
        _b64url(os.urandom(16)),
        _b64url(os.urandom(33)),
        os.urandom(32).hex(),
        "",
        "not base64 at all!",
        "a" * 43 + "*",
    ],
)
def test_bad_config_key_names_position_not_value(bad: str) -> None:
    good = KeyRing.generate()
    with pytest.raises(ValueError) as info:
        KeyRing.from_config([good, bad])
    message = str(info.value)
    assert message == "encryption key #2 is not a base64url-encoded 32-byte key"
    if bad:
        assert bad not in message and bad not in repr(info.value)
    assert good not in message


def test_from_config_requires_a_key_and_raw_keys_are_checked() -> None:
    with pytest.raises(ValueError):
        KeyRing.from_config([])
    with pytest.raises(ValueError, match="#1"):
        KeyRing([b"short"])
    with pytest.raises(ValueError):
        KeyRing([])


def test_generate_gives_distinct_valid_keys() -> None:
    first, second = KeyRing.generate(), KeyRing.generate()
    assert first != second
    assert len(base64.urlsafe_b64decode(first + "=")) == 32
    ids = {KeyRing.from_config([key]).primary_key_id for key in (first, second)}
    assert len(ids) == 2


def test_create_file_is_0600_and_exclusive(tmp_path: Path) -> None:
    path = tmp_path / "vault.key"
    old_umask = os.umask(0)  # even a permissive umask must not loosen the file
    try:
        ring = KeyRing.create_file(path)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert KeyRing.load_file(path).key_ids == ring.key_ids

    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        KeyRing.create_file(path)
    assert path.read_bytes() == before  # never overwritten


def test_load_file_skips_comments_and_keeps_order(tmp_path: Path) -> None:
    new, old = KeyRing.generate(), KeyRing.generate()
    path = tmp_path / "keys"
    path.write_text(f"# rotated 2024\n\n{new}\n  # the old one\n{old}\n")
    path.chmod(0o600)
    ring = KeyRing.load_file(path)
    assert ring.primary_key_id == KeyRing.from_config([new]).primary_key_id
    assert ring.key_ids == KeyRing.from_config([new, old]).key_ids


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o620])
def test_load_file_refuses_loose_permissions(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "vault.key"
    KeyRing.create_file(path)
    path.chmod(mode)
    with pytest.raises(VaultError, match="chmod 600") as info:
        KeyRing.load_file(path)
    assert path.read_text().splitlines()[-1] not in str(info.value)


def test_load_file_rejects_bad_lines_without_echoing_them(tmp_path: Path) -> None:
    path = tmp_path / "vault.key"
    secretish = _b64url(os.urandom(31))
    path.write_text(f"# header\n{KeyRing.generate()}\n{secretish}\n")
    path.chmod(0o600)
    with pytest.raises(VaultError, match="line 3") as info:
        KeyRing.load_file(path)
    assert secretish not in str(info.value)

    path.write_text("# only comments\n\n")
    with pytest.raises(VaultError, match="holds no key"):
        KeyRing.load_file(path)


def test_repr_and_pickle_do_not_reveal_keys() -> None:
    raw = os.urandom(32)
    ring = KeyRing([raw])
    text = repr(ring) + str(ring)
    assert ring.primary_key_id in text
    for form in (raw.hex(), _b64url(raw), base64.b64encode(raw).decode()):
        assert form not in text
    with pytest.raises(TypeError):
        pickle.dumps(ring)


def test_derived_keys_are_per_purpose_and_key_and_never_the_key_itself() -> None:
    first, second = KeyRing.generate(), KeyRing.generate()
    ring = KeyRing.from_config([first, second])
    primary = ring.derived_key("worker-credential")
    assert primary is not None and len(primary) == 32
    assert ring.derived_key("worker-credential", ring.primary_key_id) == primary
    assert ring.derived_key("another purpose") != primary
    (old_id,) = ring.key_ids - {ring.primary_key_id}
    old = ring.derived_key("worker-credential", old_id)
    assert old is not None and old != primary
    # The same key derives the same key in another ring (another process), whatever its place.
    assert KeyRing.from_config([second]).derived_key("worker-credential") == old
    assert ring.derived_key("worker-credential", "0" * 16) is None
    raw = [base64.urlsafe_b64decode(k + "=" * (-len(k) % 4)) for k in (first, second)]
    assert primary not in raw and old not in raw
