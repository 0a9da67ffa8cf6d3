"""hf:// sources through `huggingface_hub` itself, against a Hub on 127.0.0.1 (tests/support/hub_server.py).

The tests run with HF_HUB_OFFLINE=1 as every stage does: only the fetch process goes online.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from rlhf_operator.api.v1alpha1.hub import HUB_TOKEN_ENV
from rlhf_operator.workloads import hub
from rlhf_operator.workloads.errors import StageConfigError
from tests.support.hub_server import FakeHub, Repo

pytestmark = pytest.mark.unit
TOKEN = "hf_test_token"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rlhf_operator.tiny.model import build_tiny_model, build_tiny_tokenizer

    folder = tmp_path_factory.mktemp("tiny-rm")
    tokenizer = build_tiny_tokenizer()
    build_tiny_model(tokenizer, n_embd=64, n_layer=2).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


#: A repository of a few small files: what most tests fetch (no model needed to test fetching).
FILES = {
    "config.json": b'{"model_type": "gpt2"}',
    "weights.bin": bytes(range(256)) * 64,
    "sub/notes.txt": b"hi",
}


@pytest.fixture()
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    server = FakeHub(tokens={TOKEN, "hf_other"})
    server.repos[("model", "tiny/files")] = Repo(dict(FILES), {"main": "1" * 40})
    server.repos[("model", "tiny/private-model")] = Repo(dict(FILES), {"main": "2" * 40}, token=TOKEN)
    server.start()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.delenv(HUB_TOKEN_ENV, raising=False)
    hub.configure(None, None)
    try:
        yield server
    finally:
        server.stop()
        hub.configure(None, None)


def test_parse_names_the_repository_its_kind_and_revision() -> None:
    assert hub.parse("hf://org/name") == hub.HubRef("model", "org/name", "main")
    assert hub.parse("hf://org/name@v1.0", "ignored") == hub.HubRef("model", "org/name", "v1.0")
    assert hub.parse("hf://gpt2", "dev") == hub.HubRef("model", "gpt2", "dev")
    assert hub.parse("hf://datasets/org/data@abc") == hub.HubRef("dataset", "org/data", "abc")
    with pytest.raises(StageConfigError, match="is not a Hub id"):
        hub.parse("hf://org/na me/x")


def test_a_model_is_fetched_once_into_the_storage_at_its_commit(
    fake_hub: FakeHub, model_dir: Path, tmp_path: Path
) -> None:
    from rlhf_operator.workloads.lineage import model_digest
    from rlhf_operator.workloads.modeling import load_seq_cls

    fake_hub.repos[("model", "tiny/reward-model")] = Repo.from_dir(model_dir)
    hub.configure(str(tmp_path / "volume" / ".hub"), None)
    commit = fake_hub.repos[("model", "tiny/reward-model")].refs["main"]
    local = hub.localize("hf://tiny/reward-model")
    assert local == str(tmp_path / "volume" / ".hub" / "models" / "tiny" / "reward-model" / commit)
    marker = json.loads((Path(local) / "_SUCCESS").read_text())
    assert marker == {"commit": commit, "endpoint": fake_hub.url, "source": "hf://tiny/reward-model@main"}
    assert not (Path(local) / ".cache").exists()
    fetched = sum(fake_hub.downloads.values())
    assert fetched == len(fake_hub.repos[("model", "tiny/reward-model")].files)
    # Later loads read the storage: no file is downloaded again, and the model loads from there.
    model, _ = load_seq_cls("hf://tiny/reward-model")
    assert model.config.num_labels == 1 and sum(fake_hub.downloads.values()) == fetched
    # The lineage records the commit the revision resolved to, not the branch name.
    assert model_digest("hf://tiny/reward-model", None) == model_digest(
        f"hf://tiny/reward-model@{commit}", None
    )


def test_processes_of_one_node_share_one_download(fake_hub: FakeHub, tmp_path: Path) -> None:
    code = (
        "import sys; from rlhf_operator.workloads import hub; "
        "hub.configure(sys.argv[1], None); print('at', hub.localize('hf://tiny/files'))"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": fake_hub.url}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path / "cache")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-2000:] for _, err in outputs]
    assert set(fake_hub.downloads.values()) == {1}, fake_hub.downloads
    assert sum("fetched hf://tiny/files" in out for out, _ in outputs) == 1
    assert len({out.split("at ", 1)[1].strip() for out, _ in outputs}) == 1


def test_an_unknown_id_or_revision_is_a_configuration_error_that_names_it(
    fake_hub: FakeHub, tmp_path: Path
) -> None:
    hub.configure(str(tmp_path / ".hub"), None)
    with pytest.raises(StageConfigError) as missing:
        hub.localize("hf://tiny/no-such-model")
    assert missing.value.reason == "HubSourceNotFound"
    assert f"hf://tiny/no-such-model was not found on {fake_hub.url} (HTTP 404" in missing.value.message
    with pytest.raises(StageConfigError) as revision:
        hub.localize("hf://tiny/files@v9")
    assert revision.value.reason == "HubRevisionNotFound" and "no revision 'v9'" in revision.value.message
    assert not any((tmp_path / ".hub").rglob("config.json"))


def test_a_private_model_needs_the_token_and_a_wrong_token_is_refused(
    fake_hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub.configure(str(tmp_path / ".hub"), None)
    with pytest.raises(
        StageConfigError, match=r"asked without a token\): check the id, or set spec.hub.tokenSecret"
    ):
        hub.localize("hf://tiny/private-model")
    monkeypatch.setenv(HUB_TOKEN_ENV, "hf_wrong")
    with pytest.raises(StageConfigError) as refused:
        hub.localize("hf://tiny/private-model")
    assert refused.value.reason == "HubUnauthorized" and "HTTP 401" in refused.value.message
    monkeypatch.setenv(HUB_TOKEN_ENV, TOKEN)
    assert (Path(hub.localize("hf://tiny/private-model")) / "config.json").exists()


def test_an_unreachable_hub_is_retried_not_a_configuration_error(tmp_path: Path) -> None:
    from tests.support.ports import free_port

    hub.configure(str(tmp_path / ".hub"), f"http://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(RuntimeError, match="failed"):
            hub.localize("hf://tiny/files")
    finally:
        hub.configure(None, None)


def test_a_volume_without_file_locks_still_gets_one_complete_copy(
    fake_hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lustre mounted without `flock` refuses it: the download goes on unlocked."""
    import errno

    def refuse(*_: object) -> None:
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr("rlhf_operator.workloads.hub.fcntl.flock", refuse)
    hub.configure(str(tmp_path / ".hub"), None)
    local = Path(hub.localize("hf://tiny/files"))
    assert (local / "_SUCCESS").exists() and (local / "sub" / "notes.txt").read_bytes() == b"hi"
    # A second process that finds a complete copy in place keeps it and drops its own.
    staging = tmp_path / "other"
    staging.mkdir()
    hub._move_into_place(staging, local)
    assert (local / "_SUCCESS").exists()
