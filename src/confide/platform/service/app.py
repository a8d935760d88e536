"""The coordinator's HTTP API (FastAPI): thin routes over `CoordinatorHub`.

Every `/v1` route authenticates the request (see `signing`) before anything else; `/health` and
the OpenAPI document are open. JSON bodies are the versioned models of `messages`; envelopes, sums,
the public context and sealed keys are application/octet-stream. A background task ticks the
protocol (sum or fail the current round when due, open the next one) and wakes long-polls.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from confide.aggregation.errors import AggregationError
from confide.errors import BadInput
from confide.formats import DeclaredSpend, RevealStatement, StatementClaims
from confide.identity import roster_identities
from confide.platform.hub import CoordinatorHub
from confide.platform.messages import (
    HEX64,
    INSTITUTION,
    AppliedReply,
    AppliedReport,
    DeclineReply,
    DeclineRequest,
    ErrorReply,
    FederationView,
    Health,
    KeyCertificateReply,
    KeySetupReply,
    KeySetupRequest,
    ReceiptReply,
    ReportReply,
    RevealReply,
    RoundContributions,
    UndecryptableReport,
    UnmaskRequest,
)
from confide.platform.protocol import ProtocolViolation, Refusal
from confide.platform.secure_sum import split_upload
from confide.platform.service.errors import HTTP_STATUS
from confide.platform.service.gate import SCOPE_KEY, BodyTimeouts, RequestGate, UnverifiedBodies
from confide.platform.service.signing import DEFAULT_WINDOW_S, NonceStore, RequestVerifier, Unauthorized

log = logging.getLogger("confide.service.app")

MAX_WAIT_S = 30.0
_BINARY = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
_ERRORS = {code: {"model": ErrorReply} for code in (400, 401, 403, 404, 409, 413, 422)}
#: Body limits of the routes that take small JSON bodies, and of every path that takes none (bytes).
SMALL_BODY_BYTES = 64 * 1024
NO_BODY_BYTES = 4 * 1024
_UPLOAD_PATH = re.compile(r"/v1/rounds/[0-9]{1,7}/uploads/[a-z0-9][a-z0-9_.-]{0,63}")
_SMALL_BODY_PATH = re.compile(r"/v1/rounds/[0-9]{1,7}/(declines|reports|applied)/[a-z0-9][a-z0-9_.-]{0,63}")
_REVEAL_PATH = re.compile(r"/v1/rounds/[0-9]{1,7}/reveals/[a-z0-9][a-z0-9_.-]{0,63}")
#: A reveal carries N field elements of 4 bytes, in base64: room for N up to 32768.
REVEAL_BODY_BYTES = 512 * 1024
_KIND = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
         409: "conflict", 413: "too_large", 422: "invalid", 500: "internal"}


class Changes:
    """Wakes long-polls when the federation changes, and the ticker when a contribution arrives."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.changed = asyncio.Event()
        self.poked = asyncio.Event()

    def notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    async def wait(self, timeout_s: float) -> None:
        try:
            await asyncio.wait_for(self.changed.wait(), timeout_s)
        except asyncio.TimeoutError:
            pass


def _error(status: int, detail: str) -> JSONResponse:
    body = ErrorReply(error=_KIND.get(status, "error"), detail=detail)
    return JSONResponse(body.model_dump(), status_code=status)


def create_app(hub: CoordinatorHub, tick_s: float = 1.0, max_json_bytes: int = 64 * 1024 * 1024,
               max_wait_s: float = MAX_WAIT_S, body_timeouts: BodyTimeouts = BodyTimeouts(),
               unverified: UnverifiedBodies | None = None, window_s: float = DEFAULT_WINDOW_S) -> FastAPI:
    """The ASGI app serving `hub`.

    `tick_s`: how often the protocol is advanced without a poke; `max_json_bytes`: limit of the key
    set-up's body (uploads have the hub's limit, declines and reports `SMALL_BODY_BYTES`, any other
    path `NO_BODY_BYTES`); `max_wait_s`: longest long-poll; `body_timeouts`: how slowly a body may arrive;
    `unverified`: the bodies read before authentication, shared with the server's connection cap;
    `window_s`: how old a signed request may be (its nonce is remembered, in the state directory, twice
    that long).
    """
    nonces = NonceStore(hub.state_dir / "nonces.sqlite", keep_s=2 * window_s)
    verifier = RequestVerifier(hub.policy.federation_id, roster_identities(hub.policy.roster), nonces, window_s)
    changes: dict[str, Changes] = {}

    def current() -> Changes:
        # Events belong to one event loop; a test client may run each request in a fresh one.
        if "c" not in changes or changes["c"].loop is not asyncio.get_running_loop():
            changes["c"] = Changes()
        return changes["c"]

    async def ticker() -> None:
        own = current()
        while True:
            try:
                if await run_in_threadpool(hub.tick, time.time()):
                    own.notify()
            except Exception:  # a failed tick must not stop the federation; it is retried next tick
                log.exception("advancing the federation failed")
            try:
                await asyncio.wait_for(own.poked.wait(), tick_s)
            except asyncio.TimeoutError:
                pass
            own.poked.clear()

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        current()
        task = asyncio.create_task(ticker())
        try:
            yield
        finally:
            task.cancel()
            nonces.close()

    app = FastAPI(title="confide coordinator", version="1", lifespan=lifespan,
                  description="Coordinates a confide federation: key set-up, rounds, encrypted uploads and sums.")

    def changed(poke: bool = False) -> None:
        c = current()
        c.notify()
        if poke:
            c.poked.set()

    # -- errors -------------------------------------------------------------------------------
    @app.exception_handler(Unauthorized)
    async def _unauthorized(_request: Request, exc: Unauthorized) -> JSONResponse:
        return _error(401, exc.reply)

    @app.exception_handler(ProtocolViolation)
    async def _violation(_request: Request, exc: ProtocolViolation) -> JSONResponse:
        return _error(HTTP_STATUS[exc.refusal], str(exc))

    @app.exception_handler(AggregationError)
    async def _aggregation(_request: Request, exc: AggregationError) -> JSONResponse:
        return _error(422, str(exc))

    @app.exception_handler(BadInput)
    async def _bad_input(_request: Request, exc: BadInput) -> JSONResponse:
        return _error(400, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _error(422, f"{where}: {first.get('msg')}")

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.error("internal error in %s %s", request.method, request.url.path, exc_info=exc)
        return _error(500, "internal error; the coordinator's log has the details")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    # -- authentication -----------------------------------------------------------------------
    async def member(
        request: Request,
        x_confide_institution: str | None = Header(None, description="The signing institution's roster id."),
        x_confide_timestamp: str | None = Header(None, description="Unix time (whole seconds) of signing."),
        x_confide_nonce: str | None = Header(None, description="16-64 URL-safe characters, never reused."),
        x_confide_signature: str | None = Header(None, description="Ed25519 signature (base64) of the request."),
    ) -> str:
        """The institution that signed this request; the gate already verified it (401 otherwise)."""
        who = request.scope.get(SCOPE_KEY)
        if who is None:
            raise Unauthorized("request is not signed")
        return who

    def same(who: str, institution: str) -> None:
        if who != institution:
            raise ProtocolViolation(f"{who} cannot act for {institution}", Refusal.FORBIDDEN)

    # -- routes -------------------------------------------------------------------------------
    @app.get("/health", response_model=Health, tags=["service"])
    async def health() -> Health:
        """Liveness, without authentication."""
        return Health(federation_id=hub.state.federation_id, federation_status=hub.state.status)

    @app.get("/v1/federation", response_model=FederationView, responses=_ERRORS, tags=["federation"])
    async def federation(
        who: str = Depends(member),
        after_revision: int | None = Query(None, ge=0, le=2**62, description="Wait for a revision above this."),
        wait_s: float = Query(0.0, ge=0.0, le=max_wait_s, description="Long-poll at most this long (s)."),
    ) -> FederationView:
        """The federation as the asking member sees it; long-polls while nothing changed."""
        deadline = time.monotonic() + wait_s
        while after_revision is not None and hub.revision <= after_revision and time.monotonic() < deadline:
            await current().wait(deadline - time.monotonic())
        return hub.view_for(who)

    @app.put("/v1/keys", response_model=KeySetupReply, responses=_ERRORS, tags=["keys"])
    async def publish_keys(request_body: KeySetupRequest, who: str = Depends(member)) -> KeySetupReply:
        """The key holder publishes the public context and one sealed secret key per member."""
        sealed_for = await run_in_threadpool(hub.publish_keys, who, request_body)
        changed(poke=True)
        return KeySetupReply(key_id=request_body.key_id, sealed_for=sealed_for)

    @app.get("/v1/keys/public-context", response_class=Response, tags=["keys"],
             responses={200: {"content": _BINARY}, **_ERRORS})
    async def public_context(_who: str = Depends(member)) -> Response:
        """The federation's public CKKS context (no secret key)."""
        return Response(hub.public_context(), media_type="application/octet-stream")

    @app.get("/v1/keys/certificate", response_model=KeyCertificateReply, responses=_ERRORS, tags=["keys"])
    async def key_certificate(_who: str = Depends(member)) -> KeyCertificateReply:
        """The key holder's signed certificate of the federation key: members verify it before installing."""
        return await run_in_threadpool(hub.key_certificate)

    @app.get("/v1/keys/sealed/{institution}", response_class=Response, tags=["keys"],
             responses={200: {"content": _BINARY}, **_ERRORS})
    async def sealed_key(institution: str = Path(pattern=INSTITUTION), who: str = Depends(member)) -> Response:
        """The asking member's own sealed copy of the secret key (only it can open it)."""
        same(who, institution)
        return Response(await run_in_threadpool(hub.sealed_key, institution), media_type="application/octet-stream")

    @app.put("/v1/rounds/{round_index}/uploads/{institution}", response_model=ReceiptReply, tags=["rounds"],
             responses=_ERRORS,
             openapi_extra={"requestBody": {"required": True, "content": _BINARY,
                                            "description": "An update envelope (binary, own header)."}})
    async def upload(
        request: Request,
        round_index: int = Path(ge=1, le=1_000_000),
        institution: str = Path(pattern=INSTITUTION),
        ledger_head: str | None = Query(None, pattern=HEX64,
                                        description="The hash of the member's newest ledger entry."),
        noise_multiplier: float | None = Query(None, ge=0, le=1e6, description="The round's noise multiplier."),
        sample_rate: float | None = Query(None, gt=0, le=1, description="The round's Poisson sample rate."),
        steps: int | None = Query(None, ge=1, le=10**9, description="The round's DP-SGD steps."),
        clipping_norm: float | None = Query(None, gt=0, le=1e6, description="The per-sample clipping norm."),
        delta: float | None = Query(None, gt=0, lt=1, description="The delta the round is accounted at."),
        accountant: str | None = Query(None, pattern=r"^[a-z]{1,16}$", description="The accountant (pld, rdp)."),
        entry_hash: str | None = Query(None, pattern=HEX64, description="Hash of the ledger entry of the spend."),
        tags: str | None = Query(None, pattern=r"^[0-9]{1,40}(,[0-9]{1,40}){0,7}$",
                                 description="The upload's integrity tags (decimal, comma-separated)."),
        min_cohort: int = Query(1, ge=1, le=1_000_000, description="The fewest contributions the member lets a sum "
                                "holding this upload have (part of its contribution statement)."),
        statement_signature: str | None = Query(None, max_length=200, description="The member's signature (base64) "
                                                "of its contribution statement of this upload."),
        shares_bytes: int = Query(0, ge=0, le=2**31, description="How many bytes at the body's end are the mask "
                                  "shares sealed to the committee (the envelope comes first)."),
        previous_sum: str = Query("", pattern=r"^([0-9a-f]{64})?$", description="The sum the member applied in "
                                  "the round before (part of its contribution statement)."),
        who: str = Depends(member),
    ) -> ReceiptReply:
        """Upload this member's encrypted update for the round, declaring the round's DP-SGD spend.

        The coordinator refuses a spend that breaks the federation file (422) and returns a receipt
        that signs the envelope hash, the ledger head and the declared spend. `tags` and
        `min_cohort` and `statement_signature` make the member's signed contribution statement, which the other
        members check the round's sum against.
        """
        same(who, institution)
        spend = dict(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps,
                     clipping_norm=clipping_norm, delta=delta, accountant=accountant, entry_hash=entry_hash)
        missing = [name for name, value in spend.items() if value is None]
        if len(missing) not in (0, len(spend)):
            raise ProtocolViolation(f"the declared spend lacks {', '.join(missing)}", Refusal.INVALID)
        declared = DeclaredSpend.from_dict(spend) if not missing else None
        try:
            envelope, shares = split_upload(await request.body(), shares_bytes)
        except ValueError as exc:
            raise ProtocolViolation(str(exc), Refusal.MALFORMED) from None
        signed = (StatementClaims(tuple(tags.split(",")), min_cohort, statement_signature, previous_sum)
                  if tags and statement_signature else None)
        receipt = await run_in_threadpool(hub.upload, institution, round_index, envelope, time.time(), ledger_head,
                                          declared, signed, shares)
        changed(poke=True)
        return receipt

    @app.post("/v1/rounds/{round_index}/declines/{institution}", response_model=DeclineReply, tags=["rounds"],
              responses=_ERRORS)
    async def decline(
        request_body: DeclineRequest,
        round_index: int = Path(ge=1, le=1_000_000),
        institution: str = Path(pattern=INSTITUTION),
        who: str = Depends(member),
    ) -> DeclineReply:
        """Record that this member sits the round out, with its reason."""
        same(who, institution)
        await run_in_threadpool(hub.decline, institution, round_index, request_body.reason, time.time())
        changed(poke=True)
        return DeclineReply(round=round_index, institution=institution)

    @app.post("/v1/rounds/{round_index}/reports/{institution}", response_model=ReportReply, tags=["rounds"],
              responses=_ERRORS)
    async def report_undecryptable(
        request_body: UndecryptableReport,
        round_index: int = Path(ge=1, le=1_000_000),
        institution: str = Path(pattern=INSTITUTION),
        who: str = Depends(member),
    ) -> ReportReply:
        """Report that the round's published sum fails this member's decryption checks (see `faults`)."""
        same(who, institution)
        count = await run_in_threadpool(hub.report_undecryptable, institution, round_index,
                                        request_body.sum_sha256, request_body.reason)
        changed()
        return ReportReply(round=round_index, institution=institution, reports=count)

    @app.post("/v1/rounds/{round_index}/applied/{institution}", response_model=AppliedReply, tags=["rounds"],
              responses=_ERRORS)
    async def report_applied(
        request_body: AppliedReport,
        round_index: int = Path(ge=1, le=1_000_000),
        institution: str = Path(pattern=INSTITUTION),
        who: str = Depends(member),
    ) -> AppliedReply:
        """Keep this member's signed statement of the sum it applied; the other members compare theirs."""
        same(who, institution)
        await run_in_threadpool(hub.record_applied, institution, round_index, request_body.sum_sha256,
                                request_body.signature)
        changed()
        return AppliedReply(round=round_index, institution=institution)

    @app.get("/v1/rounds/{round_index}/unmask/{institution}", response_model=UnmaskRequest, responses=_ERRORS,
             tags=["rounds"])
    async def unmask_request(round_index: int = Path(ge=1, le=1_000_000), institution: str = Path(pattern=INSTITUTION),
                             who: str = Depends(member)) -> UnmaskRequest:
        """For a committee member: the contributors' statements and the mask shares they sealed to it."""
        same(who, institution)
        return await run_in_threadpool(hub.unmask_request, round_index, institution)

    @app.post("/v1/rounds/{round_index}/reveals/{institution}", response_model=RevealReply, tags=["rounds"],
              responses=_ERRORS)
    async def reveal(
        request_body: RevealStatement,
        round_index: int = Path(ge=1, le=1_000_000),
        institution: str = Path(pattern=INSTITUTION),
        who: str = Depends(member),
    ) -> RevealReply:
        """Keep a committee member's signed reveal (its share sum over the round's contributor set)."""
        same(who, institution)
        await run_in_threadpool(hub.record_reveal, institution, round_index, request_body)
        changed(poke=True)
        return RevealReply(round=round_index, institution=institution)

    @app.get("/v1/rounds/{round_index}/contributions", response_model=RoundContributions, responses=_ERRORS,
             tags=["rounds"])
    async def round_contributions(round_index: int = Path(ge=1, le=1_000_000),
                                  _who: str = Depends(member)) -> RoundContributions:
        """The signed statements of the uploads in the round's sum: members check the sum against them."""
        return await run_in_threadpool(hub.contributions, round_index)

    @app.get("/v1/rounds/{round_index}/sum", response_class=Response, tags=["rounds"],
             responses={200: {"content": _BINARY}, **_ERRORS})
    async def round_sum(round_index: int = Path(ge=1, le=1_000_000), _who: str = Depends(member)) -> Response:
        """The round's encrypted sum (a sum envelope), once summed."""
        return Response(await run_in_threadpool(hub.sum_for, round_index), media_type="application/octet-stream")

    def limit_for(method: str, path: str) -> int:
        # Only the routes that take a body get room for one; everything else, routed or not, a little.
        if method == "PUT" and _UPLOAD_PATH.fullmatch(path):
            return hub.max_upload_bytes
        if method == "PUT" and path == "/v1/keys":
            return max_json_bytes
        if method == "POST" and _SMALL_BODY_PATH.fullmatch(path):
            return SMALL_BODY_BYTES
        if method == "POST" and _REVEAL_PATH.fullmatch(path):
            return REVEAL_BODY_BYTES
        return NO_BODY_BYTES

    # Request bodies in flight wait in unnamed temporary files under the state directory.
    app.add_middleware(RequestGate, limit_for=limit_for, verifier=verifier, spool_dir=hub.state_dir / "incoming",
                       timeouts=body_timeouts, unverified=unverified)
    return app
