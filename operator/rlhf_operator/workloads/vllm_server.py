"""The vllm engine's external-server mode: rollouts from a vLLM server the job does not own.

Generation goes over the OpenAI-compatible completions API every vLLM server speaks
(`POST /v1/completions` with the prompt as token ids, `n`, a per-prompt `seed`, vLLM's
`stop_token_ids` and `return_token_ids`, so no text is re-tokenised on the way back), and log-probs
of a given response over vLLM's `prompt_logprobs`. The trainer's weights reach such a server
through vLLM's own weight-transfer protocol (HTTP control endpoints `/init_weight_transfer_engine`,
`/update_weights`, ..., the tensors over an NCCL group from trainer rank 0): pushing gigabytes per
step through HTTP bodies would be a disk round trip at network speed. NCCL needs GPUs, so that
half is phase 2 of issue 21 (docs/rollouts.md); this client is the generation half, tested against
a real vLLM server on CPU.
"""

from __future__ import annotations

import json
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any


class VllmServer:
    def __init__(
        self, base_url: str, model: str, token: str | None = None, timeout_s: float = 600.0, parallel: int = 8
    ) -> None:
        self.url = base_url.rstrip("/") + "/v1/completions"
        self.model = model
        self.token = token
        self.timeout_s = timeout_s
        self.parallel = parallel

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(
            self.url, data=json.dumps({"model": self.model, **body}).encode(), headers=headers, method="POST"
        )
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
            answer: dict[str, Any] = json.loads(response.read())
        return answer

    def generate(
        self,
        prompts: list[list[int]],
        *,
        n: int,
        max_tokens: int,
        temperature: float,
        stop_ids: list[int],
        seeds: list[int],
    ) -> list[list[int]]:
        """`n` completions (token ids) per prompt, prompt-major, as `ColocatedVllm.generate`."""

        def one(prompt_seed: tuple[list[int], int]) -> list[list[int]]:
            prompt, seed = prompt_seed
            answer = self._post(
                {
                    "prompt": prompt,
                    "n": n,
                    "max_tokens": max_tokens,
                    "temperature": temperature,
                    "top_p": 1.0,
                    "seed": seed,
                    "stop_token_ids": stop_ids,
                    "return_token_ids": True,
                }
            )
            choices = sorted(answer["choices"], key=lambda c: int(c["index"]))
            return [[int(t) for t in c["token_ids"]] for c in choices]

        with ThreadPoolExecutor(self.parallel) as pool:
            per_prompt = list(pool.map(one, zip(prompts, seeds, strict=True)))
        return [completion for completions in per_prompt for completion in completions]

    def logprobs(self, prompt: list[int], response: list[int]) -> list[float]:
        """log p(response token | everything before it) under the server's current weights."""
        ids = prompt + response
        answer = self._post({"prompt": ids, "max_tokens": 1, "prompt_logprobs": 0, "temperature": 1.0})
        scored = answer["choices"][0]["prompt_logprobs"]
        return [float(scored[i][str(ids[i])]["logprob"]) for i in range(len(prompt), len(ids))]
