"""`spec.hub`: where `hf://` model and dataset sources are fetched from, and with which token."""

from __future__ import annotations

from pydantic import Field

from rlhf_operator.api.base import ApiModel, CelRule
from rlhf_operator.api.v1alpha1.common import Location, ObjectName, ShortText

HF_SCHEME = "hf://"
DEFAULT_ENDPOINT = "https://huggingface.co"
#: The pods' variable with the token of `tokenSecret`; only the Hub fetch process reads it.
HUB_TOKEN_ENV = "RLHF_HUB_TOKEN"


class TokenSecretRef(ApiModel):
    name: ObjectName = Field(description="Name of a Secret in the RLHFJob's namespace.")
    key: ShortText = Field("token", description="Key in the Secret that holds the token.")


class HubSpec(ApiModel):
    """The Hugging Face Hub, or a mirror that speaks its API (an Artifactory or a private Hub)."""

    cel_rules = (
        CelRule(
            "!has(self.endpoint) || self.endpoint.startsWith('http://') || self.endpoint.startsWith('https://')",
            "`endpoint` must start with http:// or https://",
            lambda h: h.endpoint is None or h.endpoint.startswith(("http://", "https://")),
        ),
    )

    endpoint: Location | None = Field(
        None, description=f"Base URL of the Hub API; unset: HF_ENDPOINT of the pods, else {DEFAULT_ENDPOINT}."
    )
    token_secret: TokenSecretRef | None = Field(
        None,
        description="Secret key holding a Hub access token, for private or gated models and datasets; unset: "
        "anonymous.",
    )
