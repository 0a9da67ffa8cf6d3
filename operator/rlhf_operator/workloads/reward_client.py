"""HTTP client for the reward server (remote reward placement): batching, timeouts, retries."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

from rlhf_operator.workloads.errors import StageConfigError

RETRYABLE_STATUS = {429, 500, 502, 503, 504}


def read_token() -> str | None:
    """The bearer token: the file named by RLHF_REWARD_TOKEN_FILE (a mounted Secret), else RLHF_REWARD_TOKEN."""
    path = os.environ.get("RLHF_REWARD_TOKEN_FILE")
    if path:
        try:
            token = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise StageConfigError(
                f"cannot read the reward token file {path}: {exc}", "RewardTokenMissing"
            ) from exc
        return token or None
    return os.environ.get("RLHF_REWARD_TOKEN") or None


class RemoteRewardClient:
    def __init__(
        self,
        endpoint: str,
        token: str | None = None,
        *,
        batch_size: int = 64,
        timeout_s: float = 30.0,
        retries: int = 5,
        backoff_s: float = 0.5,
        token_hint: str = "mount the same token Secret in the policy and the server",
    ) -> None:
        self.url = endpoint.rstrip("/") + ("" if endpoint.rstrip("/").endswith("/score") else "/score")
        self.token = token
        self.batch_size = batch_size
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.token_hint = token_hint

    def _post(self, body: dict[str, list[str]]) -> list[float]:
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    rewards = json.loads(response.read())["rewards"]
                    return [float(r) for r in rewards]
            except urllib.error.HTTPError as exc:
                if exc.code in {401, 403}:
                    raise StageConfigError(
                        f"the reward server at {self.url} refused the token (HTTP {exc.code}); "
                        f"{self.token_hint}.",
                        "RewardUnauthorized",
                    ) from exc
                if exc.code not in RETRYABLE_STATUS or attempt == self.retries:
                    raise
            except (urllib.error.URLError, TimeoutError, ConnectionError):
                if attempt == self.retries:
                    raise
            # Exponential backoff: a server that is starting or overloaded gets time to recover.
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
        raise RuntimeError("unreachable")

    def score_texts(self, texts: list[str]) -> list[float]:
        out: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            out.extend(self._post({"texts": texts[start : start + self.batch_size]}))
        return out

    def score(self, prompts: list[str], completions: list[str]) -> list[float]:
        out: list[float] = []
        for start in range(0, len(prompts), self.batch_size):
            out.extend(
                self._post(
                    {
                        "prompts": prompts[start : start + self.batch_size],
                        "completions": completions[start : start + self.batch_size],
                    }
                )
            )
        return out
