"""`helm package` makes the chart users install: the .tgz installs, passes `helm test` (its
server-side dry run of an RLHFJob included) and carries the generated README."""

from __future__ import annotations

import tarfile
import uuid
from pathlib import Path

from chart_readme import render
from tests.chart_support import CHART, chart_yaml, helm
from tests.conftest import Kube
from tests.integration.test_chart import KWOK_TEST_POD, Releases, fresh_namespace


def test_the_packaged_chart_installs_and_passes_helm_test(cluster: Kube, tmp_path: Path) -> None:
    version = chart_yaml()["version"]
    output = helm("package", str(CHART), "--destination", str(tmp_path)).stdout
    package = tmp_path / f"rlhf-operator-{version}.tgz"
    assert str(package) in output
    with tarfile.open(package) as archive:
        readme = archive.extractfile("rlhf-operator/README.md")
        assert readme is not None and readme.read().decode() == render()
        assert "rlhf-operator/files/tests/rlhfjob.yaml" in archive.getnames()
    namespace = fresh_namespace(cluster, "t-chart-pkg")
    releases = Releases(cluster)
    release = f"p{uuid.uuid4().hex[:6]}"
    try:
        releases.helm(
            "install", release, str(package), "--namespace", namespace, "--take-ownership",
            "--wait", "--timeout", "120s", values=KWOK_TEST_POD,
        )  # fmt: skip
        releases.installed.append((release, namespace))
        tested = releases.helm("test", release, "--namespace", namespace, "--timeout", "120s")
        assert "Phase:          Succeeded" in tested.stdout, tested.stdout
        listed = releases.helm("list", "--namespace", namespace, "-o", "json").stdout
        assert f'"chart":"rlhf-operator-{version}"' in listed
    finally:
        releases.cleanup()
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
