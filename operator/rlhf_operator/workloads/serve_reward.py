"""Stage `serve-reward`: the reward model over HTTP for remote reward placement (aiohttp).

POST /score      {"prompts": [...], "completions": [...]} or {"texts": [...]} -> {"rewards": [...]}
                 (a prompt is a string or a chat, a list of {role, content}; prompt + completion
                 is read through the reward model's chat template when it has one: `chat_format`)
POST /get_reward {"query": [...], "prompts": [...]}  (OpenRLHF's remote RM shape) -> {"rewards": [...]}
GET  /healthz    200 while the process runs;  GET /readyz 200 once the model is loaded.
Bearer-token auth, body size and item limits (413), dynamic batching, graceful SIGTERM. Each
request is validated alone before it joins a batch (`reward_requests`): a bad one gets 400 with the
reason and never fails the requests of other clients.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import signal
import ssl
import sys
from typing import Any

from aiohttp import web

from rlhf_operator.workloads import reward_tls
from rlhf_operator.workloads.batcher import DynamicBatcher, ScoreFn
from rlhf_operator.workloads.config import StageContext
from rlhf_operator.workloads.errors import StageConfigError
from rlhf_operator.workloads.reward_client import read_token
from rlhf_operator.workloads.reward_requests import ScoreRequestError, TokenCounter, parse_counted

MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_ITEMS = 1024
#: Tokens merged into one batch (the scorer splits it into forwards by tokens again).
MAX_BATCH_TOKENS = 16_384
READY: web.AppKey[dict[str, bool]] = web.AppKey("ready", dict)
BATCHER: web.AppKey[DynamicBatcher] = web.AppKey("batcher", DynamicBatcher)
#: The loaded model's position limit and token counter, for the length check of each request.
LENGTH: web.AppKey[dict[str, Any]] = web.AppKey("length", dict)


def make_app(
    score: ScoreFn | None,
    token: str | None,
    *,
    batching: bool = True,
    max_batch: int = 64,
    max_wait_ms: float = 5.0,
    max_body: int = MAX_BODY_BYTES,
    max_batch_tokens: int | None = MAX_BATCH_TOKENS,
    max_tokens: int | None = None,
    count_tokens: TokenCounter | None = None,
) -> web.Application:
    """The aiohttp app; `score=None` starts not-ready (for the loader to set later)."""

    @web.middleware
    async def auth(request: web.Request, handler: Any) -> web.StreamResponse:
        if token is not None and request.path not in {"/healthz", "/readyz"}:
            header = request.headers.get("Authorization", "")
            given = header[7:] if header.startswith("Bearer ") else ""
            if not hmac.compare_digest(given.encode(), token.encode()):
                return web.json_response(
                    {"error": "missing or wrong bearer token"},
                    status=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
        result: web.StreamResponse = await handler(request)
        return result

    app = web.Application(middlewares=[auth], client_max_size=max_body)
    app[READY] = {"ready": score is not None}
    app[BATCHER] = DynamicBatcher(
        score or (lambda texts: []), max_batch, max_wait_ms, batching, max_tokens=max_batch_tokens
    )
    app[LENGTH] = {"max_tokens": max_tokens, "count_tokens": count_tokens}

    async def score_handler(request: web.Request) -> web.Response:
        if not request.app[READY]["ready"]:
            return web.json_response({"error": "the model is not loaded yet"}, status=503)
        length = request.app[LENGTH]
        try:
            texts, counts = parse_counted(
                await request.read(),
                MAX_ITEMS,
                length["max_tokens"],
                length["count_tokens"],
                length.get("render"),
            )
        except ScoreRequestError as exc:
            return web.json_response({"error": str(exc)}, status=exc.status)
        rewards = await request.app[BATCHER].submit(texts, None if counts is None else sum(counts))
        return web.json_response({"rewards": rewards, "scores": rewards})

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        ready = request.app[READY]["ready"]
        return web.json_response({"ready": ready}, status=200 if ready else 503)

    async def on_startup(app: web.Application) -> None:
        await app[BATCHER].start()

    async def on_cleanup(app: web.Application) -> None:
        await app[BATCHER].stop()

    app.router.add_post("/score", score_handler)
    app.router.add_post("/get_reward", score_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


async def serve(
    app: web.Application,
    host: str,
    port: int,
    load: Any = None,
    shutdown_timeout: float = 30.0,
    *,
    ssl_context: ssl.SSLContext | None = None,
) -> None:
    """Run until SIGTERM/SIGINT; then stop being ready, finish in-flight requests and exit."""
    # No access log: one formatted line per scoring request costs more than a tiny forward pass.
    runner = web.AppRunner(app, shutdown_timeout=shutdown_timeout, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    await site.start()
    print(f"reward server listening on {host}:{port}{' (TLS)' if ssl_context else ''}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if load is not None:
        # Load after binding so /healthz answers (liveness) while the weights load; /readyz waits.
        scorer = await asyncio.to_thread(load)
        app[BATCHER].score = scorer.score_texts
        app[LENGTH] = {
            "max_tokens": scorer.max_length,
            "count_tokens": scorer.count_tokens,
            # prompts + completions are read through the model's chat template (`chat_format`).
            "render": scorer.conversation,
        }
        app[READY]["ready"] = True
        print("reward server ready", flush=True)
    await stop.wait()
    app[READY]["ready"] = False
    print("reward server: SIGTERM, draining in-flight requests", flush=True)
    await runner.cleanup()  # stops accepting, waits for running handlers up to shutdown_timeout


def run(ctx: StageContext, args: argparse.Namespace) -> dict[str, Any] | None:
    from rlhf_operator.workloads.reward_scoring import LocalRewardScorer
    from rlhf_operator.workloads.reward_source import reward_model_path, reward_model_uri

    token = read_token()
    if token is None and not args.insecure_no_auth:
        raise StageConfigError(
            "no reward token is configured: set RLHF_REWARD_TOKEN_FILE (a mounted Secret) or "
            "RLHF_REWARD_TOKEN, or pass --insecure-no-auth for a local experiment.",
            "RewardTokenMissing",
        )
    if ctx.typed_spec.stages.reward_model.pretrained is None:
        reward_model_uri(ctx)  # a missing trained model fails before the server starts
    port = args.port or ctx.typed_spec.stages.reward_model.serving.port

    def load() -> LocalRewardScorer:
        return LocalRewardScorer.from_path(
            reward_model_path(ctx), batch_size=args.max_batch, token_budget=args.max_batch_tokens
        )

    app = make_app(
        None,
        token,
        batching=not args.no_batching,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_batch_tokens=args.max_batch_tokens,
    )
    asyncio.run(serve(app, args.host, port, load, ssl_context=reward_tls.server_context()))
    sys.stdout.flush()
    return None  # a server has no result; its termination message stays empty
