"""Release signing keys: an EC P-256 pair made with `cryptography`.

The private key (PKCS8 PEM, mode 0600, its folder 0700) stays where settings put it; only the
public half (SubjectPublicKeyInfo PEM, the same path plus `.pub`) and the key id travel. The key
id is what model-signing writes into a signature as `verificationMaterial.publicKey.hint`: the
sha256 of the public key's PEM encoding (not of its DER), so a verifier can name the key a bundle
was signed with before checking the signature.
"""

from __future__ import annotations

import hashlib
import logging
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tasks.core.errors import ConfigError
from tasks.core.files import read_bounded, write_atomic
from tasks.core.locks import file_lock

log = logging.getLogger(__name__)

PUBLIC_SUFFIX = ".pub"
# The curves model-signing 1.1.1 signs and verifies with (sign_ec_key._check_supported_ec_key).
CURVES = ("secp256r1", "secp384r1", "secp521r1")
MAX_KEY_BYTES = 64 * 1024  # a PEM key is a few hundred bytes; anything larger is not one


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: Path
    key_id: str


def public_key_path(private: Path) -> Path:
    """Where the public half of `private` lives: the same path plus `.pub`."""
    return private.with_name(private.name + PUBLIC_SUFFIX)


def key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    """sha256 of the SubjectPublicKeyInfo PEM: model-signing's `publicKey.hint` for this key."""
    pem = public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(pem).hexdigest()


def _read_key_file(path: Path, what: str) -> bytes:
    try:
        data = read_bounded(path, MAX_KEY_BYTES)
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot be read ({exc.strerror})") from None
    if data is None:
        raise ConfigError(f"{what} {path}: larger than {MAX_KEY_BYTES} bytes, not a PEM key")
    return data


def _supported(key: object, path: Path, what: str) -> None:
    curve = getattr(getattr(key, "curve", None), "name", None)
    if curve not in CURVES:
        raise ConfigError(f"{what} {path}: not an EC key on P-256, P-384 or P-521 (what model-signing takes)")


def load_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    """A PEM public key; ConfigError naming the file when it is missing or not an EC key."""
    data = _read_key_file(path, "public key")
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise ConfigError(f"public key {path}: not a PEM public key") from None
    _supported(key, path, "public key")
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


def load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The signing key; errors name the file, never its contents."""
    data = _read_key_file(path, "signing key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:  # cryptography's answer for an encrypted key read without a password
        raise ConfigError(
            f"signing key {path}: encrypted; slimline signs with an unencrypted key kept 0600"
        ) from None
    except ValueError:
        raise ConfigError(f"signing key {path}: not a PEM private key") from None
    _supported(key, path, "signing key")
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def _key_folder(folder: Path) -> None:
    """Create the key folder 0700; an existing folder is left as it is, with a warning if others can
    write to it (they could replace the key)."""
    if not folder.exists():
        folder.mkdir(mode=0o700, parents=True)
        folder.chmod(0o700)  # mkdir's mode is filtered by the umask
    elif stat.S_IMODE(folder.stat().st_mode) & 0o022:
        log.warning("key folder %s is writable by others than its owner", folder)


def generate_key_pair(private: Path, *, force: bool = False) -> KeyPair:
    """Make an EC P-256 key pair: `private` (PKCS8 PEM, 0600) and `private` + `.pub`.

    Refuses (ConfigError) when `private` exists, unless `force`. The public key is written first,
    so the private key, written last, exists only with its public half beside it.
    """
    private = Path(private)
    public = public_key_path(private)
    _key_folder(private.parent)
    # Two generators at once must not leave a private key beside another pair's public key.
    with file_lock(private.parent / f".{private.name}.lock"):
        if private.exists() and not force:
            try:
                existing = f" (key id {key_id(load_private_key(private).public_key())[:16]})"
            except ConfigError:
                existing = ""
            raise ConfigError(
                f"signing key {private} exists{existing}; --force replaces it, and bundles signed "
                "with it will no longer verify against the new public key"
            )
        key = ec.generate_private_key(ec.SECP256R1())
        public_pem = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        write_atomic(public, public_pem, 0o644)
        write_atomic(
            private,
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
            0o600,
        )
    pair = KeyPair(private=private, public=public, key_id=key_id(key.public_key()))
    log.info("signing key pair written: %s and %s (key id %s)", private, public, pair.key_id)
    return pair
