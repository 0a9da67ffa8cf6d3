"""Exit codes of the stage programs; the operator maps them onto the Job's podFailurePolicy."""

from __future__ import annotations

from typing import Final

#: The stage finished and its artifacts are complete.
EX_OK: Final = 0
#: Any unexpected error (node loss, OOM, flaky storage): Kubernetes may retry the pod.
EX_RETRYABLE: Final = 1
#: sysexits.h EX_CONFIG: the configuration or the input data is wrong; retrying cannot help,
#: so the operator fails the stage at once (podFailurePolicy action FailJob).
EX_CONFIG: Final = 78
