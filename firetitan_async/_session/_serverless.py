"""``ServerlessSide``: what a ``ServiceSession`` on a Fireworks serverless gateway adds.

The session's data plane is the fireworks dialect's under the serverless URL. This object holds
the rest: the control-plane client (opened on first use, on the URL without the serverless
suffix, closed with the session), the account (resolved once from the key), the sampling model
names and standalone routes (``wire/fireworks_serverless.py``), ``weights_info`` and the
training-session checkpoint calls (``platform/_training_sessions.py``). The sans-IO rules live
in the wire module; this only sequences requests, as the Fireworks SDK's
``FiretitanServiceClient`` does for its serverless path.

Example::

    side = ServerlessSide(url, key, transport=None, allow_insecure_http=False)
    model = await side.sampling_model(
        transport, "ts-1", ["run-…:train:0"], model_path="acct/run-…/step-1", base_model=None
    )   # "accounts/acct/trainingSessions/ts-1/checkpoints/acct/run-…/step-1"
"""

from __future__ import annotations

from collections.abc import Sequence

import httpx
from tinker import types

from .._http._transport import Transport
from ..errors import InvalidInput
from ..platform._checkpoints import PromotedModel
from ..platform._rest import RestCore
from ..platform._training_sessions import (
    SessionCheckpoint,
    delete_training_session,
    list_session_checkpoints,
    promote_session_checkpoint,
)
from ..wire import fireworks_serverless as wire
from ..wire import paths
from ..wire.futures import validate_reply
from ..wire.promotion import promote_body

__all__ = ["ServerlessSide"]


class ServerlessSide:
    """See the module docstring. The key is kept only by the clients it opens."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        transport: httpx.AsyncBaseTransport | None,
        allow_insecure_http: bool,
    ) -> None:
        self.control_plane_url = wire.control_plane_url(base_url)
        self._api_key = api_key
        self._transport = transport
        self._allow_insecure_http = allow_insecure_http
        self._rest: RestCore | None = None

    def __repr__(self) -> str:
        return f"ServerlessSide({self.control_plane_url!r})"

    @property
    def rest(self) -> RestCore:
        """The control-plane client (opened on first use)."""
        if self._rest is None:
            self._rest = RestCore(
                self._api_key,
                base_url=self.control_plane_url,
                transport=self._transport,
                allow_insecure_http=self._allow_insecure_http,
            )
        return self._rest

    async def aclose(self) -> None:
        """Close the control-plane client, if one was opened."""
        if self._rest is not None:
            await self._rest.aclose()

    async def account_id(self) -> str:
        """The account of the key (``GET /v1/accounts``, once)."""
        return await self.rest.account_id()

    async def sampling_model(
        self,
        transport: Transport,
        session_id: str,
        model_ids: Sequence[str],
        model_path: str | None,
        base_model: str | None,
    ) -> str:
        """The completions ``model`` for a checkpoint (``model_path``) or the base weights
        (``base_model``), binding a standalone route first where the SDK does: a checkpoint
        of a run this session did not create, or a base model on a session with no model."""
        runs = {model_id.partition(":train:")[0] for model_id in model_ids}
        if model_path is not None:
            checkpoint = model_path.strip().strip("/")
            named = wire.parse_session_checkpoint(checkpoint)
            if named is not None:
                account, target, name = named
                return wire.session_model(account or await self.account_id(), target, name)
            parts = checkpoint.split("/")
            own = bool(runs) if len(parts) < 3 else parts[1] in runs
            account = await self.account_id()
            if own:
                return wire.session_model(account, session_id, checkpoint)
            model, run = wire.standalone_checkpoint_model(account, checkpoint)
            await self._bind(transport, wire.sampling_route_body(training_run=run))
            return model
        assert base_model is not None
        account = await self.account_id()
        if runs:  # the session's rollout host serves its base weights
            return wire.session_model(account, session_id, None)
        await self._bind(transport, wire.sampling_route_body(base_model=base_model))
        return f"accounts/{account}/trainingSamplers/{base_model}"

    async def _bind(self, transport: Transport, body: dict[str, object]) -> None:
        await transport.call("POST", paths.CREATE_SAMPLING_ROUTE, json_body=body)

    async def weights_info(self, transport: Transport, path: str) -> types.WeightsInfoResponse:
        """``POST /api/v1/weights_info``: the base model and LoRA settings of a checkpoint."""
        body = wire.weights_info_body(path)
        reply = await transport.call("POST", paths.WEIGHTS_INFO, json_body=body)
        return validate_reply(types.WeightsInfoResponse, reply, "weights_info reply")

    async def list_checkpoints(self, session_id: str, page_size: int) -> list[SessionCheckpoint]:
        """The session's checkpoints (oldest first)."""
        return await list_session_checkpoints(
            self.rest, await self.account_id(), session_id, page_size=page_size
        )

    async def promote(
        self,
        session_id: str,
        checkpoint: SessionCheckpoint | str,
        output_model_id: str,
        base_model: str,
    ) -> PromotedModel:
        """Promote a checkpoint of the session: a listed row, its full name or its id."""
        promote_body("-", output_model_id, base_model)  # refuse bad input before sending
        if isinstance(checkpoint, SessionCheckpoint):
            name = checkpoint.name
        elif isinstance(checkpoint, str) and checkpoint and "/" not in checkpoint:
            account = await self.account_id()
            name = f"{wire.session_model(account, session_id, None)}/checkpoints/{checkpoint}"
        elif isinstance(checkpoint, str) and wire.parse_session_checkpoint(checkpoint):
            name = checkpoint
        else:
            raise InvalidInput(
                "checkpoint",
                "must be a SessionCheckpoint, its name (accounts/<a>/trainingSessions/<ts>/"
                f"checkpoints/<id>) or its id, got {checkpoint!r}",
            )
        return await promote_session_checkpoint(self.rest, name, output_model_id, base_model)

    async def delete_session(self, session_id: str) -> None:
        """``DELETE`` the training session (idempotent)."""
        await delete_training_session(self.rest, await self.account_id(), session_id)
