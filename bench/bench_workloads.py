"""Benchmarks of the stage programs on the tiny model (CPU), measured side by side in one run.

    .venv/bin/python bench/bench_workloads.py [--workdir DIR] [--out docs/bench-workloads.json]

1. generation tokens/s, batched (left padding) vs one prompt at a time;
2. reward server req/s and p99 latency at 32 concurrent clients, dynamic batching on vs off;
3. PPO seconds/step and the reward curve (the policy stage of a local pipeline run);
4. peak RSS of every stage (each stage re-run under /usr/bin/time).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the tests' helpers, when run as a script

from bench.results import finish_results, start_results  # noqa: E402

from rlhf_operator.api.stage_io import ProgressRecord  # noqa: E402
from tests.support.launchers import wait_http_ready  # noqa: E402
from tests.support.ports import free_port  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def bench_generation(model_dir: str, prompts: list[str]) -> dict[str, float]:
    import torch

    from rlhf_operator.workloads.modeling import (
        GenerationSettings,
        generate_texts,
        load_causal_lm,
        load_tokenizer,
    )

    tokenizer = load_tokenizer(model_dir)
    model = load_causal_lm(model_dir, tokenizer=tokenizer)
    settings = GenerationSettings(max_new_tokens=16)
    out: dict[str, float] = {}
    for label, batch in (("unbatched", 1), ("batched", 64)):
        torch.manual_seed(0)
        started = time.perf_counter()
        texts = generate_texts(model, tokenizer, prompts, settings, batch_size=batch)
        elapsed = time.perf_counter() - started
        out[f"{label}_tokens_per_s"] = sum(len(t[0].split()) for t in texts) / elapsed
    out["speedup"] = out["batched_tokens_per_s"] / out["unbatched_tokens_per_s"]
    return out


def serve(model_dir: str, port: int, batching: bool) -> None:
    from aiohttp import web

    from rlhf_operator.workloads.reward_scoring import LocalRewardScorer
    from rlhf_operator.workloads.serve_reward import make_app
    from rlhf_operator.workloads.serve_reward import serve as run_server

    scorer = LocalRewardScorer.from_path(model_dir)
    app = make_app(scorer.score_texts, "bench-token", batching=batching, max_batch=64, max_wait_ms=5)
    assert isinstance(app, web.Application)
    asyncio.run(run_server(app, "127.0.0.1", port))


async def _load(port: int, clients: int, per_client: int) -> tuple[float, list[float]]:
    import aiohttp

    url = f"http://127.0.0.1:{port}/score"
    headers = {"Authorization": "Bearer bench-token"}
    latencies: list[float] = []
    async with aiohttp.ClientSession(headers=headers) as session:

        async def client(i: int) -> None:
            for j in range(per_client):
                body = {
                    "prompts": [f"w{i % 60:02d} w{j % 60:02d} "],
                    "completions": ["good w01 great w02 w03"],
                }
                started = time.perf_counter()
                async with session.post(url, json=body) as response:
                    assert response.status == 200, response.status
                    await response.json()
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(client(i) for i in range(2)))  # warm-up
        latencies.clear()
        started = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(clients)))
        return time.perf_counter() - started, latencies


def bench_server(model_dir: str, clients: int = 32, per_client: int = 150) -> dict[str, float]:

    out: dict[str, float] = {}
    for label, batching in (("unbatched", False), ("batched", True)):
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", model_dir, str(port)]
            + ([] if batching else ["--no-batching"]),
            stdout=subprocess.DEVNULL,
        )
        try:
            wait_http_ready(f"http://127.0.0.1:{port}/readyz", proc, timeout=60)
            elapsed, latencies = asyncio.run(_load(port, clients, per_client))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        latencies.sort()
        out[f"{label}_req_per_s"] = len(latencies) / elapsed
        out[f"{label}_p99_ms"] = 1000 * latencies[int(0.99 * (len(latencies) - 1))]
    out["throughput_ratio"] = out["batched_req_per_s"] / out["unbatched_req_per_s"]
    return out


def bench_pipeline(workdir: Path) -> dict[str, Any]:
    import yaml

    from tests.train.conftest import tiny_manifest

    manifest = workdir / "job.yaml"
    manifest.write_text(yaml.safe_dump(tiny_manifest("bench", steps=30)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "rlhf_operator",
            "run-local",
            str(manifest),
            "--workdir",
            str(workdir),
            "--with-tiny-assets",
        ],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    rss: dict[str, float] = {}
    curve: list[ProgressRecord] = []
    configs = workdir / "configs"
    for stage in ("precompute", "ranking", "reward-model", "policy", "evaluation"):
        if stage == "policy":  # rerun from scratch, not from the finished checkpoints
            subprocess.run(["rm", "-rf", str(workdir / "rlhf-jobs/default/bench/local/policy")], check=True)
        proc = subprocess.run(
            [
                "/usr/bin/time",
                "-f",
                "MAXRSS %M",
                sys.executable,
                "-m",
                "rlhf_operator.workloads",
                stage,
                "--config",
                str(configs / f"{stage}.json"),
            ],
            capture_output=True,
            text=True,
            env={**env, "RLHF_TERMINATION_MESSAGE_PATH": str(workdir / "term")},
            check=True,
        )
        rss[stage] = int(proc.stderr.rsplit("MAXRSS ", 1)[1].split()[0]) / 1024
        if stage == "policy":
            from rlhf_operator.api.stage_io import parse_progress

            curve = [r for r in (parse_progress(line) for line in proc.stdout.splitlines()) if r]
    seconds = [r.seconds or 0.0 for r in curve[1:]]  # step 1 includes warm-up
    return {
        "peak_rss_mib": rss,
        "ppo_seconds_per_step": statistics.median(seconds),
        "reward_curve": [(r.step, round(r.mean_reward or 0.0, 2), round(r.kl or 0.0, 2)) for r in curve],
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", default=str(REPO / ".local" / "bench"))
    parser.add_argument("--out", default=None)
    parser.add_argument(
        "--only",
        choices=["pipeline", "generation", "server"],
        action="append",
        default=None,
        help="run only these parts (the pipeline part must have run once in the workdir)",
    )
    parser.add_argument("--serve", nargs=2, metavar=("MODEL", "PORT"), help=argparse.SUPPRESS)
    parser.add_argument("--no-batching", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], int(args.serve[1]), not args.no_batching)
        return 0
    from rlhf_operator.tiny import make_prompts
    from rlhf_operator.workloads.runtime import quiet_libraries

    quiet_libraries()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    parts = args.only or ["pipeline", "generation", "server"]
    # Other work on the machine skews timings: record the load next to them.
    results = start_results()
    if "pipeline" in parts:
        results["pipeline"] = bench_pipeline(workdir)
    model = str(workdir / "models" / "tiny-gpt2")
    if "generation" in parts:
        results["generation"] = bench_generation(model, make_prompts(64, seed=1))
    if "server" in parts:
        # The trained 0.1M-parameter tiny RM (HTTP overhead dominates) and a 3.2M-parameter RM of the
        # policy's size (random score head: speed does not depend on the weights).
        results["reward_server_tiny_rm"] = bench_server(
            str(workdir / "rlhf-jobs/default/bench/local/reward-model")
        )
        results["reward_server_3m_rm"] = bench_server(model)
    return finish_results(results, args.out)


if __name__ == "__main__":
    sys.exit(main())
