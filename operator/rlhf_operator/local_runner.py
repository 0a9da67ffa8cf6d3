"""`rlhf-operator run-local FILE`: run every stage of an RLHFJob on this machine, in order.

The same stage programs and StageConfig files as in the cluster, each stage a subprocess. The
manifest's storage volume mountPath (e.g. /data) is mapped onto --workdir, so a manifest written
for EKS runs unchanged on a laptop. Remote reward placement starts the reward server as a local
subprocess with a generated token.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from rlhf_operator.api.stage_config import dump_stage_config
from rlhf_operator.api.stage_io import EX_CONFIG, RESULT_PREFIX, parse_progress
from rlhf_operator.api.v1alpha1 import PIPELINE_STAGES, RLHFJobSpec, StageName
from rlhf_operator.children import JobIdentity, stage_config
from rlhf_operator.stages import STAGES, skipped

SERVE_REWARD = str(STAGES[StageName.REWARD_SERVER].command)


def remap(value: Any, mount_path: str, workdir: str) -> Any:
    """Every string under the volume's mountPath, rewritten to the same place under workdir."""
    if isinstance(value, dict):
        return {k: remap(v, mount_path, workdir) for k, v in value.items()}
    if isinstance(value, list):
        return [remap(v, mount_path, workdir) for v in value]
    if (
        isinstance(value, str)
        and mount_path
        and (value == mount_path or value.startswith(mount_path.rstrip("/") + "/"))
    ):
        return workdir.rstrip("/") + value[len(mount_path.rstrip("/")) :]
    return value


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stage_env(workdir: Path, stage: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env["RLHF_TERMINATION_MESSAGE_PATH"] = str(workdir / "results" / f"{stage}.json")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def run_stage(
    cli_stage: str,
    config: Path,
    workdir: Path,
    env_extra: dict[str, str] | None = None,
    launcher: list[str] | None = None,
) -> tuple[int, dict[str, Any]]:
    """Run one stage to the end, echoing its output (progress lines condensed); returns (rc, result)."""
    (workdir / "results").mkdir(parents=True, exist_ok=True)
    result_path = workdir / "results" / f"{cli_stage}.json"
    result_path.unlink(missing_ok=True)
    cmd = [
        *(launcher or [sys.executable]),
        "-m",
        "rlhf_operator.workloads",
        cli_stage,
        "--config",
        str(config),
    ]
    started = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_stage_env(workdir, cli_stage, env_extra),
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        record = parse_progress(line)
        if record is not None:
            print(
                f"[{cli_stage}] step {record.step}/{record.total_steps} reward "
                f"{record.mean_reward or 0:.3f} kl {record.kl or 0:.3f}",
                flush=True,
            )
        elif not line.startswith(RESULT_PREFIX):
            print(f"[{cli_stage}] {line.rstrip()}", flush=True)
    rc = proc.wait()
    result = json.loads(result_path.read_text()) if result_path.exists() else {}
    print(
        f"[{cli_stage}] exit {rc} after {time.monotonic() - started:.1f}s: "
        f"{result.get('message') or result.get('error') or ''}",
        flush=True,
    )
    return rc, result


class RewardServer:
    """The serve-reward stage as a background subprocess, with a generated bearer token."""

    def __init__(self, config: Path, workdir: Path) -> None:
        self.token = secrets.token_urlsafe(24)
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        (workdir / "results").mkdir(parents=True, exist_ok=True)
        log = open(workdir / "results" / "serve-reward.log", "w")  # noqa: SIM115 - lives as long as the server
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rlhf_operator.workloads",
                SERVE_REWARD,
                "--config",
                str(config),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_stage_env(workdir, SERVE_REWARD, {"RLHF_REWARD_TOKEN": self.token}),
        )

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the reward server exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(self.endpoint + "/readyz", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise TimeoutError("the reward server did not become ready")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def plan(spec: RLHFJobSpec) -> list[StageName]:
    """The stages that run, in order: the operator's pipeline without those spec.dataset skips."""
    return [stage for stage in PIPELINE_STAGES if not skipped(spec, stage)]


class _LocalRun:
    """Runs the stages of one RLHFJob as subprocesses, with the operator's StageConfig files."""

    def __init__(self, job: JobIdentity, spec: RLHFJobSpec, root: str, workdir: Path) -> None:
        self.job, self.spec, self.root, self.workdir = job, spec, root, workdir
        self.configs = workdir / "configs"
        self.configs.mkdir(exist_ok=True)

    def write_config(self, stage: StageName, endpoint: str | None = None) -> Path:
        path = self.configs / f"{STAGES[stage].command}.json"
        path.write_text(dump_stage_config(stage_config(self.job, self.spec, stage, self.root, endpoint)))
        return path

    def _launcher(self, stage: StageName) -> list[str] | None:
        nodes = self.spec.stages.policy.nodes if stage is StageName.POLICY else 1
        return (
            [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nodes}"]
            if nodes > 1
            else None
        )

    def run(self, stage: StageName) -> tuple[int, dict[str, Any]]:
        command = str(STAGES[stage].command)
        if stage is StageName.PRECOMPUTE:  # the shards of the Indexed Job, one after the other
            rc, result = 0, dict[str, Any]()
            for index in range(self.spec.stages.precompute.shards):
                env = {"JOB_COMPLETION_INDEX": str(index)}
                rc, result = run_stage(command, self.write_config(stage), self.workdir, env)
                if rc:
                    break
            return rc, result
        if stage is StageName.POLICY and self.spec.stages.policy.reward_placement == "remote":
            server = RewardServer(self.write_config(StageName.REWARD_SERVER), self.workdir)
            try:
                server.wait_ready()
                config = self.write_config(stage, server.endpoint)
                env = {"RLHF_REWARD_TOKEN": server.token}
                return run_stage(command, config, self.workdir, env, self._launcher(stage))
            finally:
                server.stop()
        return run_stage(command, self.write_config(stage), self.workdir, launcher=self._launcher(stage))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlhf-operator run-local", description=__doc__)
    parser.add_argument("manifest", help="RLHFJob YAML")
    parser.add_argument(
        "--workdir", default=None, help="stands in for the storage volume (default .local/<name>)"
    )
    parser.add_argument(
        "--with-tiny-assets",
        action="store_true",
        help="first write the tiny model and synthetic dataset into the workdir",
    )
    args = parser.parse_args(argv)
    manifest = yaml.safe_load(Path(args.manifest).read_text(encoding="utf-8"))
    if not isinstance(manifest, dict) or manifest.get("kind") != "RLHFJob":
        print(f"error: {args.manifest} is not an RLHFJob manifest", file=sys.stderr)
        return EX_CONFIG
    meta = manifest.get("metadata") or {}
    name, namespace = meta.get("name", "local"), meta.get("namespace", "default")
    workdir = Path(args.workdir or Path(".local") / name).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    if args.with_tiny_assets:
        from rlhf_operator.tiny import make_tiny_assets

        ranking = ((manifest.get("spec") or {}).get("stages") or {}).get("ranking") or {}
        judge = ranking.get("method") == "aiJudge"  # the tiny judge takes seconds to train: only when used
        print(f"tiny assets: {make_tiny_assets(workdir, judge=judge)}", flush=True)
    raw_spec = manifest.get("spec") or {}
    storage_spec = raw_spec.get("storage") or {}
    mount = (storage_spec.get("volume") or {}).get("mountPath", "/data")
    try:
        spec = RLHFJobSpec.model_validate(remap(raw_spec, mount, str(workdir)))
    except ValidationError as exc:
        print(f"error: the spec of {args.manifest} is invalid: {exc}", file=sys.stderr)
        return EX_CONFIG
    from rlhf_operator.api.artifacts import JOBS_DIR, join

    base = spec.storage.s3.prefix if spec.storage.volume is None and spec.storage.s3 else str(workdir)
    runner = _LocalRun(
        JobIdentity(namespace, name, "local"), spec, join(base, JOBS_DIR, namespace, name, "local"), workdir
    )
    results: dict[str, dict[str, Any]] = {}
    for stage in plan(spec):
        rc, results[stage.value] = runner.run(stage)
        if rc:
            return rc
    root = runner.root
    evaluation = results.get(StageName.EVALUATION.value, {})
    print("\n== evaluation ==", flush=True)
    print(json.dumps(evaluation.get("metrics", {}), indent=2), flush=True)
    print(evaluation.get("message", ""), flush=True)
    print(f"artifacts: {root}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
