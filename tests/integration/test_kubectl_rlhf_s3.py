"""`kubectl rlhf pull` of a job whose artifacts are on S3: read straight from the bucket (a local S3
server, moto's, on 127.0.0.1) with the caller's credentials, through kubectl and the real API server."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from localcluster import tools_dir
from rlhf_operator.local_runner import free_port
from tests.conftest import Kube
from tests.integration import operator_harness as harness


def test_pull_copies_a_stage_from_s3(crd_installed: Kube, namespace: str, tmp_path: Path) -> None:
    import s3fs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    aws = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
    }  # fmt: skip
    try:
        job = harness.rlhfjob("on-s3", namespace)
        job["spec"]["storage"] = {"s3": {"prefix": "s3://bucket/jobs"}}
        harness.apply(crd_installed, job)
        uid = crd_installed.get_json("rlhfjob", "on-s3", "-n", namespace)["metadata"]["uid"]
        root = f"bucket/jobs/rlhf-jobs/{namespace}/on-s3/{uid}"
        fs = s3fs.S3FileSystem(
            key="testing", secret="testing", client_kwargs={"endpoint_url": aws["AWS_ENDPOINT_URL"]}
        )
        fs.mkdir("bucket")
        fs.pipe({f"{root}/evaluation/report.json": b'{"winRate": 0.9}', f"{root}/tensorboard/evaluation/ev": b"e",
                 f"{root}/policy/model/config.json": b"{}"})  # fmt: skip
        env = {**os.environ, **aws, "KUBECONFIG": crd_installed.kubeconfig}
        env["PATH"] = f"{Path(sys.executable).parent}:{tools_dir() / 'bin'}:{env['PATH']}"
        out = tmp_path / "pulled"
        result = subprocess.run(
            ["kubectl", "rlhf", "pull", "on-s3", "-n", namespace, "--stage", "evaluation", str(out)],
            env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"2 files into {out}"
        assert (out / "evaluation" / "report.json").read_bytes() == b'{"winRate": 0.9}'
        assert (out / "tensorboard" / "evaluation" / "ev").read_bytes() == b"e"
        assert not (out / "policy").exists()  # another stage's artifacts stay where they are
    finally:
        server.stop()
