"""HTTP client for the reward server (remote reward placement): batching, timeouts, retries.

Micro-batches go out `in_flight` at a time, so the server scores one while the next is on the
wire (its batcher merges what arrives together). A request is re-sent only when the server surely
is not computing it: it was not delivered (connection refused or dropped while sending), the server
refused it (429, 503), failed it (500, 502) or dropped the connection without answering. A request
that timed out waiting for its answer is not re-sent: the server may still be computing it, and a
second copy would only queue behind the first; the stage fails instead, saying so.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from rlhf_operator.workloads import reward_tls
from rlhf_operator.workloads.chat_format import Prompt
from rlhf_operator.workloads.errors import StageConfigError

#: Statuses whose request the server is not computing any more (504: a proxy gave up waiting while
#: the server may still be computing, so it is not here).
RETRYABLE_STATUS = {429, 500, 502, 503}


class RewardTimeoutError(RuntimeError):
    """The server did not answer in time; the request was not re-sent (it may still be computing)."""


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
        timeout_s: float = 120.0,  # a wait for the answer that runs out is not retried: generous
        retries: int = 5,
        backoff_s: float = 0.5,
        in_flight: int = 2,
        token_hint: str = "mount the same token Secret in the policy and the server",
    ) -> None:
        self.url = endpoint.rstrip("/") + ("" if endpoint.rstrip("/").endswith("/score") else "/score")
        self.token = token
        self.batch_size = batch_size
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        # https (serving.tls): verified against the certificate the operator mounted.
        self.tls = reward_tls.client_context() if self.url.startswith("https://") else None
        self.in_flight = max(1, in_flight)
        self.token_hint = token_hint

    def _post(self, body: dict[str, list[Any]]) -> list[float]:
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s, context=self.tls) as response:
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
            except urllib.error.URLError:  # not delivered: connecting or sending failed
                if attempt == self.retries:
                    raise
            except TimeoutError as exc:  # delivered, no answer yet: the server may be computing it
                count = len(next(iter(body.values())))
                raise RewardTimeoutError(
                    f"the reward server at {self.url} did not answer {count} texts within "
                    f"{self.timeout_s:g} s; not re-sent, since it may still be scoring them."
                ) from exc
            except ConnectionError:  # dropped without an answer (http.client.RemoteDisconnected too)
                if attempt == self.retries:
                    raise
            # Exponential backoff: a server that is starting or overloaded gets time to recover.
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
        raise RuntimeError("unreachable")

    def _post_all(self, bodies: list[dict[str, list[Any]]]) -> list[float]:
        """Every body posted, `in_flight` at a time, their rewards in order."""
        if len(bodies) == 1 or self.in_flight == 1:
            return [r for body in bodies for r in self._post(body)]
        with ThreadPoolExecutor(self.in_flight) as pool:
            return [r for rewards in pool.map(self._post, bodies) for r in rewards]

    def score_texts(self, texts: list[str]) -> list[float]:
        step = self.batch_size
        return self._post_all([{"texts": texts[i : i + step]} for i in range(0, len(texts), step)])

    def score(self, prompts: Sequence[Prompt], completions: list[str]) -> list[float]:
        """Rewards of (prompt, completion) pairs; a chat prompt goes as its messages, which the
        server renders with its reward model's chat template (`chat_format`)."""
        step = self.batch_size
        return self._post_all(
            [
                {"prompts": list(prompts[i : i + step]), "completions": completions[i : i + step]}
                for i in range(0, len(prompts), step)
            ]
        )


def reward_runs_elsewhere(score: object) -> bool:
    """True for the reward server's client: the caller may overlap scoring with its own work."""
    return isinstance(getattr(score, "__self__", None), RemoteRewardClient)
