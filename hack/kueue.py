"""Real Kueue on the local cluster, run like the control plane's components: a local process.

`hack/install-tools.sh kueue` builds the controller from its Go module and copies, from the same
module, its CRDs and webhook configurations into the tools cache. `LocalKueue.start()`:

- applies the CRDs (server-side);
- makes a CA and a serving certificate for 127.0.0.1 (Kueue's own cert rotation is for an
  in-cluster Service and is turned off: `internalCertManagement.enable: false`);
- starts `kueue --config ...` against the cluster's kubeconfig, its webhook server on 127.0.0.1
  (a free port), no leader election, no metrics or visibility server. Without its cert rotation
  Kueue 0.17 insists on loading a metrics certificate from the fixed path METRICS_CERTS even with
  metrics off: the same certificate goes there (needs root, as the real node does) and is removed
  again by `stop()` when this created it;
- registers Kueue's webhooks for the integrations it runs (batch/Job, Pod, Deployment) and for its
  own objects, pointing at that URL with the CA bundle. The Job, Pod and Deployment webhooks only
  see namespaces labelled MANAGED_LABEL (as is Kueue's `managedJobsNamespaceSelector`), so other
  tests sharing the cluster never pass through them.

`stop()` removes the webhook registrations first (nothing may call a stopped webhook server), then
ends the process it started.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

MANAGED_LABEL = ("kueue.rlhf-operator.dev/managed", "true")
#: Webhooks of the integrations started and of Kueue's own kinds, by their path's tail.
SERVED_PATHS = ("-batch-v1-job", "--v1-pod", "-apps-v1-deployment", "-kueue-x-k8s-io-")
WORKLOAD_PATHS = ("-batch-v1-job", "--v1-pod", "-apps-v1-deployment")
FRAMEWORKS = ["batch/job", "pod", "deployment"]
PREFIX = "rlhf-local-kueue"
METRICS_CERTS = Path("/etc/kueue/metrics/certs")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serving_certificate(directory: Path) -> bytes:
    """A CA and a certificate for 127.0.0.1 signed by it (tls.crt/tls.key); the CA's PEM."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "local-kueue-ca")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "tls.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return ca.public_bytes(serialization.Encoding.PEM)


def kueue_configuration(webhook_port: int, health_port: int, cert_dir: Path) -> dict[str, Any]:
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": "kueue-system",
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
        "metrics": {"bindAddress": "0"},
        "webhook": {"host": "127.0.0.1", "port": webhook_port, "certDir": str(cert_dir)},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "managedJobsNamespaceSelector": {"matchLabels": dict([MANAGED_LABEL])},
        "integrations": {"frameworks": FRAMEWORKS},
    }


def webhook_configurations(manifests: str, url: str, ca: bytes) -> list[dict[str, Any]]:
    """Kueue's webhook configurations, for the served paths only, calling `url` instead of a Service."""
    out = []
    for document in yaml.safe_load_all(manifests):
        if not document:
            continue
        hooks = []
        for hook in document.get("webhooks") or []:
            path = hook["clientConfig"]["service"]["path"]
            if not any(tail in path for tail in SERVED_PATHS):
                continue
            hook["clientConfig"] = {"url": url + path, "caBundle": base64.b64encode(ca).decode()}
            if any(path.endswith(tail) for tail in WORKLOAD_PATHS):
                hook["namespaceSelector"] = {"matchLabels": dict([MANAGED_LABEL])}
            hook["timeoutSeconds"] = 10
            hooks.append(hook)
        kind = document["kind"]
        document["metadata"] = {
            "name": f"{PREFIX}-{'mutating' if kind.startswith('Mutating') else 'validating'}"
        }
        document["webhooks"] = hooks
        out.append(document)
    return out


class LocalKueue:
    def __init__(self, kubeconfig: str, kubectl: str, tools: Path, workdir: Path) -> None:
        self.kubeconfig, self.kubectl_binary = kubeconfig, kubectl
        self.binary = tools / "bin" / "kueue"
        self.manifests = tools / "kueue"
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None
        self.created: list[Path] = []

    def kubectl(self, *args: str, input: str | None = None) -> str:
        result = subprocess.run(
            [self.kubectl_binary, "--kubeconfig", self.kubeconfig, *args],
            input=input, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def start(self, timeout_s: float = 120) -> None:
        if not self.binary.exists():
            raise RuntimeError(f"Kueue is not installed in {self.binary.parent}: run `make tools`")
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(self.manifests / "crds"))
        crds = [
            f"crd/{p.stem.split('_', 1)[1]}.{p.stem.split('_', 1)[0]}"
            for p in (self.manifests / "crds").glob("*.yaml")
        ]
        self._established(crds)
        namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kueue-system"}}
        self.kubectl("apply", "-f", "-", input=json.dumps(namespace))
        webhook_port, health_port = free_port(), free_port()
        ca = serving_certificate(self.workdir / "certs")
        self._metrics_certificate()
        config = self.workdir / "kueue-config.yaml"
        config.write_text(
            yaml.safe_dump(kueue_configuration(webhook_port, health_port, self.workdir / "certs"))
        )
        log = (self.workdir / "kueue.log").open("ab")
        self.process = subprocess.Popen(
            [str(self.binary), f"--config={config}", f"--kubeconfig={self.kubeconfig}",
             "--feature-gates=VisibilityOnDemand=false", "--zap-log-level=2"],
            stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ),
        )  # fmt: skip
        self._wait_ready(f"http://127.0.0.1:{health_port}/readyz", timeout_s)
        hooks = webhook_configurations(
            (self.manifests / "webhooks.yaml").read_text(), f"https://127.0.0.1:{webhook_port}", ca
        )
        self.kubectl(
            "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": hooks})
        )

    def _metrics_certificate(self) -> None:
        if (METRICS_CERTS / "tls.crt").exists():
            return
        # The topmost directory this creates goes again in stop().
        top = next(p for p in reversed([METRICS_CERTS, *METRICS_CERTS.parents]) if not p.exists())
        try:
            METRICS_CERTS.mkdir(parents=True)
        except PermissionError as err:
            raise RuntimeError(f"Kueue needs {METRICS_CERTS} (a fixed path): run as root") from err
        self.created = [top]
        for name in ("tls.crt", "tls.key"):
            shutil.copy(self.workdir / "certs" / name, METRICS_CERTS / name)

    def _established(self, crds: list[str], timeout_s: float = 60) -> None:
        # `kubectl wait` errs instead of waiting while a new CRD has no status yet: ask again.
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.kubectl("wait", "--for=condition=Established", *crds, "--timeout=10s")
                return
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)

    def _wait_ready(self, url: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                break
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        tail = (self.workdir / "kueue.log").read_text(errors="replace").splitlines()[-20:]
        raise RuntimeError("Kueue did not become ready:\n" + "\n".join(tail))

    def stop(self) -> None:
        for kind in ("mutatingwebhookconfiguration", "validatingwebhookconfiguration"):
            subprocess.run(
                [self.kubectl_binary, "--kubeconfig", self.kubeconfig, "delete", kind,
                 f"{PREFIX}-{kind.removesuffix('webhookconfiguration')}", "--ignore-not-found"],
                capture_output=True, timeout=60, check=False,
            )  # fmt: skip
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for path in self.created:
            shutil.rmtree(path, ignore_errors=True)
