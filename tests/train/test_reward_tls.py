"""The reward server over TLS (`serving.tls`): the real stage program serves HTTPS with the mounted
certificate and the policy's client verifies it; a client that trusts another certificate, or
speaks plain HTTP, gets nothing."""

from __future__ import annotations

import json
import ssl
import subprocess
import urllib.error
from pathlib import Path
from typing import Any

import pytest

from rlhf_operator.api.stage_config import REWARD_TLS_DIR_ENV
from rlhf_operator.workloads.reward_client import RemoteRewardClient
from tests.support.launchers import RewardServerLauncher, wait_http_ready
from tests.train.conftest import env, stage_config

pytestmark = pytest.mark.train


def _certificate(folder: Path) -> Path:
    """A self-signed certificate for 127.0.0.1, as a kubernetes.io/tls Secret holds it."""
    folder.mkdir()
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", str(folder / "tls.key"), "-out", str(folder / "tls.crt"), "-days", "1",
         "-subj", "/CN=reward-server", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True,
    )  # fmt: skip
    return folder


def _client_dir(server_dir: Path, folder: Path) -> Path:
    """What the operator mounts in the policy pod: the certificate, never the key."""
    folder.mkdir()
    (folder / "tls.crt").write_bytes((server_dir / "tls.crt").read_bytes())
    return folder


def test_reward_server_speaks_tls_and_the_client_verifies_it(
    pipeline: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "serve.json"
    config.write_text(json.dumps(stage_config(str(pipeline["root"]), pipeline["spec"], "rewardServer")))
    server_dir = _certificate(tmp_path / "server")
    server = RewardServerLauncher(
        config, {**env(), REWARD_TLS_DIR_ENV: str(server_dir)}, tmp_path / "serve.log", token="tok"
    )
    url = f"https://127.0.0.1:{server.port}"
    try:
        trusted = ssl.create_default_context(cafile=str(server_dir / "tls.crt"))
        wait_http_ready(url + "/readyz", server.process, 90, context=trusted)

        monkeypatch.setenv(REWARD_TLS_DIR_ENV, str(_client_dir(server_dir, tmp_path / "client")))
        rewards = RemoteRewardClient(url, "tok", retries=0).score_texts(
            ["w01 w02 good great", "w01 w02 w03 w04"]
        )
        assert len(rewards) == 2 and rewards[0] > rewards[1]

        other = _certificate(tmp_path / "other")
        monkeypatch.setenv(REWARD_TLS_DIR_ENV, str(_client_dir(other, tmp_path / "other-client")))
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            RemoteRewardClient(url, "tok", retries=0).score_texts(["w01"])
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            RemoteRewardClient(f"http://127.0.0.1:{server.port}", "tok", retries=0).score_texts(["w01"])
    finally:
        out = server.stop()
    assert "listening on 127.0.0.1" in out and "(TLS)" in out
