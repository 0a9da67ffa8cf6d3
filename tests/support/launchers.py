"""The one launcher of the operator process and the one of the reward server, with readiness waits."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]


def wait_http_ready(
    url: str,
    process: subprocess.Popen[bytes] | subprocess.Popen[str],
    timeout: float = 90.0,
    context: ssl.SSLContext | None = None,
) -> None:
    """Until `url` answers 200 (an https `url` verified with `context`); fails at once when the
    process exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode} before {url} was ready")
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} was not ready within {timeout:.0f}s")


def stop_process(process: subprocess.Popen[bytes] | subprocess.Popen[str], timeout: float = 15.0) -> None:
    """SIGTERM, then SIGKILL if it does not exit in time."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


class OperatorLauncher:
    """`python -m rlhf_operator operator` against a kubeconfig, logging to a file.

    `env` replaces every RLHF_OPERATOR_* variable of this process's environment, so a setting never
    leaks in from the shell.
    """

    def __init__(
        self,
        kubeconfig: str | Path,
        log_path: Path,
        env: Mapping[str, str],
        python: str | Path = sys.executable,
        pythonpath: Path | None = None,
    ) -> None:
        self.log_path = log_path
        self.python = str(python)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RLHF_OPERATOR_")}
        self.env.pop("KUBERNETES_SERVICE_HOST", None)
        self.env.update(env, KUBECONFIG=str(kubeconfig))
        if pythonpath is not None:
            self.env["PYTHONPATH"] = str(pythonpath)
        self.process: subprocess.Popen[bytes] | None = None
        self.liveness = ""
        self._log: IO[bytes] | None = None

    def start(self) -> None:
        self.liveness = f"http://127.0.0.1:{free_port()}/healthz"
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [self.python, "-m", "rlhf_operator", "operator", f"--liveness={self.liveness}"],
            env=self.env, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT,
        )  # fmt: skip

    def wait_ready(self, timeout: float = 60.0) -> None:
        assert self.process is not None, "start() first"
        try:
            wait_http_ready(self.liveness, self.process, timeout)
        except (RuntimeError, TimeoutError) as err:
            raise AssertionError(f"{err}\noperator log:\n{self.log_tail()}") from err

    def alive(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            raise AssertionError(f"the operator exited:\n{self.log_tail()}")
        try:
            with urllib.request.urlopen(self.liveness, timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._close()

    def stop(self) -> None:
        if self.process:
            stop_process(self.process)
        self._close()

    def _close(self) -> None:
        if self._log:
            self._log.close()
            self._log = None


class RewardServerLauncher:
    """The serve-reward stage program on a free loopback port with a bearer token."""

    def __init__(
        self, config: Path, env: Mapping[str, str], log_path: Path, token: str | None = "s3cret"
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = token
        self.log_path = log_path
        command = [sys.executable, "-m", "rlhf_operator.workloads", "serve-reward", "--config", str(config),
                   "--host", "127.0.0.1", "--port", str(self.port)]  # fmt: skip
        full_env = {**env, **({"RLHF_REWARD_TOKEN": token} if token else {})}
        with log_path.open("wb") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(command, env=full_env, stdout=log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 90.0) -> None:
        wait_http_ready(self.url + "/readyz", self.process, timeout)

    def stop(self) -> str:
        """Stops it with SIGTERM (as Kubernetes does) and returns its output."""
        stop_process(self.process, timeout=30)
        return self.log_path.read_text(errors="replace")
