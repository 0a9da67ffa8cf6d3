"""The operator's handler threads convert and decode API objects at once from their first event on.

msgspec (lightkube's decoder) crashes the process when several threads build a type's decoding
info at the same time; `build_type_info()` builds it first, in one thread. Each run is a fresh
process, because the info, once built, stays for the life of the process.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
THREADS = 16
# The operator's own manifests (Job and ConfigMap of every stage, the reward server's Deployment,
# Service and Secret), converted and decoded back by THREADS threads released together.
SCRIPT = f"""
import json, sys, threading
import msgspec, yaml
from lightkube import codecs
from lightkube.models.meta_v1 import Status
from rlhf_operator.api.v1alpha1 import PIPELINE_STAGES, RLHFJob
from rlhf_operator.children import JobIdentity, config_map, stage_config, stage_job
from rlhf_operator.reward_server_manifests import (reward_server_deployment, reward_server_service,
    reward_token_secret)
from rlhf_operator.config import OperatorConfig
from rlhf_operator.kube import build_type_info

manifest = yaml.safe_load(open("examples/eks-remote-reward-rlhfjob.yaml"))
manifest["metadata"].update(namespace="ml", uid="u-1")
job = RLHFJob.model_validate(manifest)
who, config = JobIdentity("ml", job.metadata.name, "u-1"), OperatorConfig()
objects = [stage_job(who, job.spec, stage, config) for stage in PIPELINE_STAGES]
objects += [config_map(who, stage, stage_config(who, job.spec, stage, "s3://b/r")) for stage in PIPELINE_STAGES]
objects += [reward_server_deployment(who, job.spec, config, replicas=1), reward_server_service(who, job.spec),
            reward_token_secret(who, "t")]
if sys.argv[1] == "built":
    build_type_info()
start, failures = threading.Barrier({THREADS}), []

def work():
    start.wait()
    for body in objects:
        resource = codecs.from_dict(body)
        msgspec.json.decode(msgspec.json.encode(body), type=type(resource))
    msgspec.json.decode(b'{{"code": 404, "reason": "NotFound"}}', type=Status)

threads = [threading.Thread(target=work) for _ in range({THREADS})]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print("ok", len(objects))
"""


@pytest.mark.parametrize("run", range(3))
def test_threads_convert_the_operators_objects_once_type_info_is_built(run: int) -> None:
    result = subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", SCRIPT, "built"],
        capture_output=True, text=True, timeout=120, cwd=ROOT, check=False,
    )  # fmt: skip
    assert result.returncode == 0 and result.stdout.startswith("ok "), result.stderr[-3000:]
