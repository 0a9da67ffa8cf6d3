"""A local OpenAI-compatible chat completions server that serves a real (tiny) judge model.

It stands where vLLM or a gateway stands in production, on 127.0.0.1: `POST /v1/chat/completions`
with a bearer token, the model name checked (404 otherwise, in OpenAI's error shape), the messages
rendered through the judge's chat template, one token answered with its top log-probs.

    python tests/train/openai_judge_server.py MODEL_DIR PORT TOKEN SERVED_NAME
"""

from __future__ import annotations

import sys
import time

import torch
from aiohttp import web
from transformers import AutoModelForCausalLM, AutoTokenizer


def make_app(model_dir: str, token: str, served_name: str) -> web.Application:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()  # type: ignore[no-untyped-call]
    requests_seen = {"count": 0}

    def error(status: int, message: str, kind: str) -> web.Response:
        return web.json_response({"error": {"message": message, "type": kind, "code": None}}, status=status)

    async def completions(request: web.Request) -> web.Response:
        requests_seen["count"] += 1
        if request.headers.get("Authorization") != f"Bearer {token}":
            return error(401, "Incorrect API key provided.", "invalid_request_error")
        body = await request.json()
        if body.get("model") != served_name:
            return error(404, f"The model `{body.get('model')}` does not exist.", "invalid_request_error")
        text = tokenizer.apply_chat_template(body["messages"], tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            logprobs = model(**ids).logits[0, -1].float().log_softmax(-1)
        top = torch.topk(logprobs, int(body.get("top_logprobs") or 1))
        listed = [
            {"token": tokenizer.convert_ids_to_tokens(int(i)), "logprob": float(v), "bytes": None}
            for v, i in zip(top.values, top.indices, strict=True)
        ]
        answer = listed[0]
        choice = {
            "index": 0,
            "finish_reason": "length",
            "message": {"role": "assistant", "content": answer["token"]},
            "logprobs": {"content": [{**answer, "top_logprobs": listed}]} if body.get("logprobs") else None,
        }
        return web.json_response(
            {
                "id": f"chatcmpl-{requests_seen['count']}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": served_name,
                "choices": [choice],
                "usage": {
                    "prompt_tokens": int(ids["input_ids"].shape[1]),
                    "completion_tokens": 1,
                    "total_tokens": 0,
                },
            }
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    return app


if __name__ == "__main__":
    model_dir, port, token, served = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    web.run_app(
        make_app(model_dir, token, served),
        host="127.0.0.1",
        port=port,
        print=lambda *_: print("ready", flush=True),
    )
