"""An AI judge served elsewhere, asked over the OpenAI chat completions API (the `openai` client).

Teams judge with a served model (vLLM, TGI, SGLang, a gateway in front of a hosted model) rather
than load a second large model into the ranking pod. Each question is one chat completion of one
token at temperature 0 with `logprobs`: the score is log P(yes) - log P(no) from the top log-probs
(vLLM, TGI and SGLang return them); a server that returns none is read from its answer text
(yes: +1, no: -1, anything else: 0, a tie). The client's own retries (with backoff, on 408/409/429/
5xx and connection errors) and timeout apply; questions run `maxConcurrency` at a time.

Errors name the URL. A refused key (401/403) or an unknown model or path (404) is configuration:
the stage fails at once (exit 78). An endpoint that cannot be reached after the retries is
retryable (exit 1): Kubernetes retries the pod, and the message says what was tried.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from rlhf_operator.workloads.errors import StageConfigError
from rlhf_operator.workloads.judge_prompts import Question

if TYPE_CHECKING:
    from rlhf_operator.api.v1alpha1 import JudgeEndpoint

#: Where the operator puts the API key (from `endpoint.apiKeySecret`, as a secretKeyRef env var).
API_KEY_ENV = "RLHF_JUDGE_API_KEY"
#: Log-probability given to an answer missing from the top log-probs: below any listed one.
UNLISTED_LOGPROB = -30.0
TOP_LOGPROBS = 10


class JudgeUnreachableError(RuntimeError):
    """The endpoint did not answer after the client's retries: retryable, the message names it."""


class EndpointJudge:
    def __init__(self, endpoint: JudgeEndpoint, api_key: str | None = None) -> None:
        import openai

        self.url = endpoint.url.rstrip("/")
        self.model = endpoint.model
        self.concurrency = endpoint.max_concurrency
        self.retries = endpoint.max_retries
        self.timeout = endpoint.timeout_seconds
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        # An open endpoint needs no key, but the client insists on one: send a placeholder.
        self.client = openai.OpenAI(
            base_url=self.url,
            api_key=key or "no-key",
            timeout=float(endpoint.timeout_seconds),
            max_retries=endpoint.max_retries,
        )

    def ask(self, questions: list[Question]) -> list[float]:
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(self._ask_one, questions))

    def _ask_one(self, question: Question) -> float:
        import openai

        try:
            reply = self.client.chat.completions.create(
                model=self.model,
                messages=question.messages,  # type: ignore[arg-type]
                max_tokens=1,
                temperature=0.0,
                logprobs=True,
                top_logprobs=TOP_LOGPROBS,
            )
        except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
            raise StageConfigError(
                f"the judge endpoint {self.url} refused the API key ({exc.status_code}): check the Secret "
                "named in stages.ranking.aiJudge.endpoint.apiKeySecret.",
                "JudgeUnauthorized",
            ) from exc
        except openai.NotFoundError as exc:
            raise StageConfigError(
                f"the judge endpoint {self.url} answered 404 for model {self.model!r}: check "
                "stages.ranking.aiJudge.endpoint.url (the base URL, up to /v1) and .model.",
                "JudgeNotFound",
            ) from exc
        except openai.BadRequestError as exc:
            raise StageConfigError(
                f"the judge endpoint {self.url} refused the request (400): {exc.message}",
                "JudgeRequestRefused",
            ) from exc
        except (openai.APIConnectionError, openai.APIStatusError) as exc:
            raise JudgeUnreachableError(
                f"the judge endpoint {self.url} did not answer after {self.retries} retries "
                f"(timeout {self.timeout}s each): {exc}"
            ) from exc
        return answer_log_odds(reply.model_dump(), question)


def answer_log_odds(reply: dict[str, Any], question: Question) -> float:
    """log P(yes) - log P(no) from a chat completion (a dict as the API returns it)."""
    choice = (reply.get("choices") or [{}])[0]
    content = str((choice.get("message") or {}).get("content") or "").strip()
    tokens = ((choice.get("logprobs") or {}).get("content")) or []
    if tokens:
        listed: dict[str, float] = {}
        for entry in tokens[0].get("top_logprobs") or [tokens[0]]:
            word = str(entry.get("token", "")).strip()
            logprob = float(entry.get("logprob", UNLISTED_LOGPROB))
            if math.isfinite(logprob):
                listed[word] = max(logprob, listed.get(word, UNLISTED_LOGPROB))
        if question.yes in listed or question.no in listed:
            return listed.get(question.yes, UNLISTED_LOGPROB) - listed.get(question.no, UNLISTED_LOGPROB)
    if content.startswith(question.yes):
        return 1.0
    if content.startswith(question.no):
        return -1.0
    return 0.0
