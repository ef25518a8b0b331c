"""Request dependencies as ``Annotated`` aliases: the runtime, the router, the caller."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from context_server.api.limits import BAD_KEY, CALLER_KEY, MISSING_KEY
from context_server.audit import note_caller
from context_server.keys import ADMIN, Caller
from context_server.routing import ContextRouter
from context_server.runtime import Runtime

_bearer = HTTPBearer(auto_error=False)


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def get_router(request: Request) -> ContextRouter:
    return ContextRouter(get_runtime(request))


def authenticate(runtime: Runtime, admin_token: str, token: str) -> Caller | None:
    """The server's admin token, or an API key; ``None`` for anything else. The caller is
    noted in the request's audit record."""
    caller: Caller | None = ADMIN
    if not secrets.compare_digest(token.encode(), admin_token.encode()):
        caller = runtime.authenticate(token)
    if caller is not None:
        note_caller(caller)
    return caller


def get_caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    """The admin token `serve` writes into the data dir, or an API key. The edge
    (``limits.RequestLimits``) has usually looked the key up already, before the body was
    read: its caller is reused rather than looked up again."""
    stashed = request.scope.get(CALLER_KEY)
    if isinstance(stashed, Caller):
        return stashed
    if credentials is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            MISSING_KEY,
            headers={"WWW-Authenticate": "Bearer"},
        )
    caller = authenticate(
        get_runtime(request), request.app.state.admin_token, credentials.credentials
    )
    if caller is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            BAD_KEY,
            headers={"WWW-Authenticate": "Bearer"},
        )
    return caller


CallerDep = Annotated[Caller, Depends(get_caller)]


def administers(runtime: Runtime, caller: Caller) -> bool:
    """The server's admin token, or a user key whose user the policy file lets
    ``administer`` the ``system`` (``p, group:admins, system, administer``)."""
    if caller.kind == "admin":
        return True
    directory = runtime.directory
    return (
        caller.kind == "user"
        and directory.has_policy
        and directory.permits(caller.subject, "system", "administer")
    )


def require_admin(request: Request, caller: CallerDep) -> None:
    """Administrators only (``administers``)."""
    if administers(get_runtime(request), caller):
        return
    raise HTTPException(
        status.HTTP_403_FORBIDDEN,
        f"this route is for administrators; {caller.label}'s key may not use it (the policy "
        "file can let a user administer: 'p, user:NAME, system, administer')",
    )


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
RouterDep = Annotated[ContextRouter, Depends(get_router)]
AdminDep = Depends(require_admin)
