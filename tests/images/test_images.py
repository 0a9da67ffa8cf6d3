"""The images as a kubelet runs them: real containers (podman with runc), never the dev venv.

Each container runs the way the chart's securityContext runs it on a node: UID 65532, a read-only
root filesystem, no capabilities, no new privileges, only the chart's mounts writable (/tmp is an
emptyDir there, a tmpfs here), and no /etc/passwd entry added by the runtime (`--passwd=false`:
podman adds one by default, a kubelet never does).

Build the images first: `make images` (hack/build-images.sh); `make test-images` does both.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import Kube

ROOT = Path(__file__).resolve().parents[2]
TAG = "dev"
IMAGES = ("operator", "worker", "trainer", "trainer-vllm")
UID = 65532


def image(name: str) -> str:
    return f"localhost/rlhf-operator/{name}:{TAG}"


def podman(*args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
    """podman on the private storage hack/build-images.sh builds into."""
    script = f'source "{ROOT}/hack/containers-env.sh" && exec podman "$@"'
    result = subprocess.run(
        ["bash", "-c", script, "podman", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


def restricted(*extra: str) -> list[str]:
    """`podman run` options equal to the chart's pod and container securityContext."""
    return [
        "run", "--rm", "--passwd=false", "--read-only", "--read-only-tmpfs=false",
        "--user", f"{UID}:{UID}", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
        "--tmpfs", "/tmp:rw,size=256m,mode=1777", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def images_built() -> None:
    if shutil.which("podman") is None:
        pytest.fail("podman is not installed: apt-get install podman (see docs/images.md)")
    for name in IMAGES:
        if podman("image", "exists", image(name), check=False).returncode != 0:
            pytest.fail(f"{image(name)} is not built: run `make images` first")


@pytest.mark.parametrize("name", IMAGES)
def test_image_user_has_a_passwd_entry_and_a_writable_home(name: str) -> None:
    config = json.loads(podman("image", "inspect", image(name)).stdout)[0]["Config"]
    assert config["User"] == f"{UID}:{UID}"
    probe = (
        "import getpass, os, pathlib; "
        "home = pathlib.Path(os.environ['HOME']); (home / 'probe').write_text('x'); "
        "print(getpass.getuser(), os.getuid(), home)"
    )
    result = podman(*restricted("--entrypoint", "python", image(name), "-c", probe), check=False)
    assert result.returncode == 0, result.stderr
    user, uid, home = result.stdout.split()
    assert (user, uid, home) == ("nonroot", str(UID), "/tmp")


def test_worker_stage_program_writes_only_inside_its_mounts(tmp_path: Path) -> None:
    """A real program of the worker image (the tiny model and dataset, written with transformers and
    datasets, whose caches go to HOME) on a read-only root: a write anywhere else fails it."""
    data = tmp_path / "data"
    data.mkdir(mode=0o777)
    data.chmod(0o777)
    result = podman(
        *restricted("--volume", f"{data}:/data", image("worker"), "make-tiny-assets", "--out", "/data"),
        check=False,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (data / "models" / "tiny-gpt2" / "config.json").exists()
    assert (data / "datasets" / "tiny-task" / "prompts.jsonl").exists()


#: Run inside trainer-vllm: the vllm engine's start-up check, then the colocated engine generating
#: from the tiny GPT-2 as the policy stage runs it (rlhf_operator.workloads.vllm_engine).
VLLM_CHECK = """
import json, sys, time
from pathlib import Path
from transformers import AutoTokenizer
from rlhf_operator.workloads.vllm_engine import ColocatedVllm, VllmSettings, check_engine

model = sys.argv[1]
architectures = json.loads(Path(model, "config.json").read_text())["architectures"]
vllm = check_engine(architectures)
started = time.perf_counter()
engine = ColocatedVllm(VllmSettings(model=model, max_model_len=64, dtype="float32"), architectures)
prompt = AutoTokenizer.from_pretrained(model)("the cat sat on", add_special_tokens=False)["input_ids"]
completions = engine.generate([prompt], n=2, max_tokens=6, temperature=1.0, stop_ids=[], seeds=[0])
print("RESULT " + json.dumps({"vllm": vllm.__version__, "completions": completions,
                              "seconds": round(time.perf_counter() - started, 1)}))
"""


def test_trainer_vllm_runs_the_stage_program_and_starts_vllm_on_the_tiny_model(tmp_path: Path) -> None:
    """The image the operator gives a policy with `generation.engine: vllm`: its stage program runs,
    and vLLM (the cpu variant, as `make images` builds it) starts on a read-only root with the model
    mounted read-only, then generates."""
    from rlhf_operator.tiny.assets import make_tiny_assets

    usage = podman(*restricted(image("trainer-vllm"), "--help"), check=False)
    assert usage.returncode == 0 and "policy" in usage.stdout, usage.stdout + usage.stderr
    assets = tmp_path / "assets"
    make_tiny_assets(assets)
    for path in (assets, *assets.rglob("*")):
        path.chmod(path.stat().st_mode | 0o555 if path.is_dir() else path.stat().st_mode | 0o444)
    model = "/assets/models/tiny-gpt2"
    result = podman(
        *restricted("--volume", f"{assets}:/assets:ro", "--entrypoint", "python", image("trainer-vllm"),
                    "-c", VLLM_CHECK, model),
        check=False,
        timeout=600,
    )  # fmt: skip
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert result.returncode == 0 and lines, result.stdout[-3000:] + result.stderr[-5000:]
    seen = json.loads(lines[-1].removeprefix("RESULT "))
    print(f"trainer-vllm: {seen}")
    assert seen["vllm"].startswith("0.31.0")
    assert len(seen["completions"]) == 2 and all(0 < len(c) <= 6 for c in seen["completions"])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def operator_container(crd_installed: Kube, namespace: str, tmp_path: Path) -> Iterator[tuple[str, int]]:
    """The operator image running as the chart runs it, against the test cluster on 127.0.0.1."""
    kubeconfig = tmp_path / "kubeconfig"
    flat = crd_installed.kubectl("config", "view", "--raw", "--minify", "--flatten").stdout
    kubeconfig.write_text(flat)
    kubeconfig.chmod(0o644)
    port, name = free_port(), f"rlhf-operator-test-{namespace}"
    podman(
        *restricted(
            "--detach", "--name", name,
            # The host's loopback only: the API server and the liveness port are on 127.0.0.1.
            "--network", "host",
            "--volume", f"{kubeconfig}:/etc/rlhf/kubeconfig:ro",
            "--env", "KUBECONFIG=/etc/rlhf/kubeconfig",
            "--env", f"RLHF_OPERATOR_NAMESPACES={namespace}",
            "--env", "RLHF_OPERATOR_METRICS_PORT=0",
            image("operator"), "operator", f"--liveness=http://127.0.0.1:{port}/healthz",
        )
    )  # fmt: skip
    try:
        yield name, port
    finally:
        logs = podman("logs", name, check=False)
        print(logs.stdout[-4000:], logs.stderr[-4000:])
        podman("rm", "--force", "--time", "5", name, check=False)


def test_operator_starts_as_nonroot_on_a_read_only_root_and_reconciles(
    operator_container: tuple[str, int], crd_installed: Kube, namespace: str
) -> None:
    name, port = operator_container

    def healthy() -> bool:
        if podman("container", "exists", name, check=False).returncode != 0:
            raise AssertionError(f"the operator container exited: {podman('logs', name, check=False).stderr}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    crd_installed.wait_for(healthy, timeout=120, interval=1, what="the operator's liveness endpoint")
    job: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "tiny-rlhfjob.yaml").read_text())
    crd_installed.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(job))

    def reconciled() -> dict[str, Any] | None:
        status: dict[str, Any] = crd_installed.get_json("rlhfjob", "tiny", "-n", namespace).get("status", {})
        return status if status.get("phase") else None

    status = crd_installed.wait_for(reconciled, timeout=120, interval=1, what="the operator to set a phase")
    assert status["phase"] in ("Pending", "Running"), status
    inspect = json.loads(podman("inspect", name).stdout)[0]
    assert inspect["State"]["Running"], inspect["State"]
    assert inspect["Config"]["User"] == f"{UID}:{UID}"
    assert inspect["HostConfig"]["ReadonlyRootfs"] is True
    # The container had time to die of a start-up error; it is still up.
    time.sleep(1)
    assert podman("container", "exists", name, check=False).returncode == 0


def test_helm_test_script_runs_in_the_operator_image(crd_installed: Kube, tmp_path: Path) -> None:
    """The chart's `helm test` hook runs files/tests/check_operator.py in the operator image: only the
    operator's packages are there. A dead liveness URL must fail it; the CRD and dry-run checks must pass."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(crd_installed.kubectl("config", "view", "--raw", "--minify", "--flatten").stdout)
    kubeconfig.chmod(0o644)
    tests_dir = ROOT / "charts" / "rlhf-operator" / "files" / "tests"
    sample = json.dumps(yaml.safe_load((tests_dir / "rlhfjob.yaml").read_text()))
    result = podman(
        *restricted(
            "--network", "host", "--volume", f"{kubeconfig}:/etc/rlhf/kubeconfig:ro",
            "--env", "KUBECONFIG=/etc/rlhf/kubeconfig", "--env", f"HEALTH_URL=http://127.0.0.1:{free_port()}/healthz",
            "--env", "TIMEOUT_SECONDS=1", "--env", f"SAMPLE_RLHFJOB={sample}", "--env", "NAMESPACE=default",
            "--entrypoint", "python", image("operator"), "-c", (tests_dir / "check_operator.py").read_text(),
        ),
        check=False,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAILED liveness" in result.stderr, result.stderr
    # The CRD is served and a server-side dry run accepts the sample and refuses it without baseModel.
    assert "FAILED crd" not in result.stderr and "FAILED dry-run" not in result.stderr, result.stderr
