"""TLS between the reward server and the policy (`serving.tls`): the operator mounts the certificate
Secret in $RLHF_REWARD_TLS_DIR, all of it (tls.crt, tls.key) for the server, only ca.crt and tls.crt
for the policy, which verifies the server against ca.crt (a private CA) or else tls.crt itself (a
self-signed certificate)."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

from rlhf_operator.api.stage_config import REWARD_TLS_DIR_ENV
from rlhf_operator.workloads.errors import StageConfigError


def _tls_dir() -> Path | None:
    value = os.environ.get(REWARD_TLS_DIR_ENV)
    return Path(value) if value else None


def server_context() -> ssl.SSLContext | None:
    """The server's certificate and key, or None to serve plain HTTP."""
    folder = _tls_dir()
    if folder is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(folder / "tls.crt", folder / "tls.key")
    except (OSError, ssl.SSLError) as exc:
        raise StageConfigError(
            f"cannot load the reward server's certificate from {folder} (tls.crt, tls.key): {exc}; "
            "serving.tls.secretName must name a kubernetes.io/tls Secret",
            "RewardTlsInvalid",
        ) from exc
    return context


def client_context() -> ssl.SSLContext | None:
    """What verifies the server (hostname included), or None for the system's CAs."""
    folder = _tls_dir()
    if folder is None:
        return None
    anchor = folder / "ca.crt" if (folder / "ca.crt").exists() else folder / "tls.crt"
    try:
        return ssl.create_default_context(cafile=str(anchor))
    except (OSError, ssl.SSLError) as exc:
        raise StageConfigError(
            f"cannot load {anchor} to verify the reward server: {exc}", "RewardTlsInvalid"
        ) from exc
