"""The reward server: auth (401), size limits (413), readiness, scoring shapes, SIGTERM."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.support.launchers import RewardServerLauncher
from tests.train.conftest import env, stage_config

pytestmark = pytest.mark.train


def _post(
    url: str, body: Any, token: str | None = None, raw: bytes | None = None
) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        url, data=raw if raw is not None else json.dumps(body).encode(), headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read())
        except ValueError:
            return exc.code, {}


def test_reward_server(pipeline: dict[str, Any], tmp_path: Path) -> None:
    config = tmp_path / "serve.json"
    config.write_text(json.dumps(stage_config(str(pipeline["root"]), pipeline["spec"], "rewardServer")))
    server = RewardServerLauncher(config, env(), tmp_path / "serve.log", token="tok")
    url = server.url
    try:
        server.wait_ready()
        assert _post(url + "/score", {"texts": ["w01 good"]})[0] == 401
        assert _post(url + "/score", {"texts": ["w01 good"]}, token="wrong")[0] == 401
        assert _post(url + "/score", {"texts": ["w01"] * 5000}, token="tok")[0] == 413
        assert _post(url + "/score", None, token="tok", raw=b"x" * (5 * 1024 * 1024))[0] == 413
        status, body = _post(
            url + "/score",
            {"prompts": ["w01 w02 "] * 2, "completions": ["good great", "w03 w04"]},
            token="tok",
        )
        assert status == 200 and body["rewards"][0] > body["rewards"][1]
        status, same = _post(
            url + "/score", {"texts": ["w01 w02 good great", "w01 w02 w03 w04"]}, token="tok"
        )
        assert status == 200 and same["rewards"] == pytest.approx(body["rewards"], abs=1e-4)
        status, openrlhf = _post(url + "/get_reward", {"query": ["w01 w02 good great"]}, token="tok")
        assert status == 200 and openrlhf["rewards"][0] == pytest.approx(body["rewards"][0], abs=1e-4)
        _poison_requests_fail_alone(url + "/score")
    finally:
        out = server.stop()
    assert server.process.returncode == 0, out[-2000:]
    assert "draining" in out


POISON: list[tuple[bytes, str]] = [
    (b'{"texts": ["\xff good"]}', "not valid UTF-8"),
    (b'{"completions": null}', "must be a list of strings, not null"),
    (b'{"texts": [""]}', "is empty"),
    (json.dumps({"texts": ["w01 " * 300]}).encode(), "the reward model reads at most 64"),
    (b'{"completions": [1, 2]}', "must be a string, not int"),
]


def _poison_requests_fail_alone(url: str) -> None:
    """Bad requests from one client, valid ones from eight others at the same time: every bad one
    gets 400 with its reason, and not one valid request fails (they share the model's batches)."""

    def valid(client: int) -> list[int]:
        body = {"texts": [f"w0{client} good", "w01 w02 w03"]}
        return [_post(url, body, token="tok")[0] for _ in range(15)]

    def poison() -> list[tuple[int, str]]:
        answers = []
        for _ in range(3):
            for raw, _reason in POISON:
                status, body = _post(url, None, token="tok", raw=raw)
                answers.append((status, str(body.get("error", ""))))
        return answers

    with ThreadPoolExecutor(max_workers=9) as pool:
        bad = pool.submit(poison)
        good = [pool.submit(valid, client) for client in range(8)]
        poisoned = bad.result(timeout=120)
        statuses = [status for future in good for status in future.result(timeout=120)]
    assert statuses == [200] * 120
    assert [status for status, _ in poisoned] == [400] * len(POISON) * 3
    for (_, error), (_, reason) in zip(poisoned, POISON * 3, strict=True):
        assert reason in error


def test_server_refuses_to_start_without_token(pipeline: dict[str, Any], tmp_path: Path) -> None:
    config = tmp_path / "serve.json"
    config.write_text(json.dumps(stage_config(str(pipeline["root"]), pipeline["spec"], "rewardServer")))
    clean = {k: v for k, v in env().items() if not k.startswith("RLHF_REWARD_TOKEN")}
    proc = subprocess.run(
        [sys.executable, "-m", "rlhf_operator.workloads", "serve-reward", "--config", str(config)],
        env={**clean, "RLHF_TERMINATION_MESSAGE_PATH": str(tmp_path / "term")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 78
    assert json.loads((tmp_path / "term").read_text())["reason"] == "RewardTokenMissing"
