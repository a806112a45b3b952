"""The relay's one error hierarchy.

Every error a webhook sender or subscriber can cause is a ``RelayError`` with
the HTTP status and the contract's error code it maps to, and a detail that
says what failed and where. The HTTP edge turns them into
``{"error": code, "detail": detail}`` answers; nothing else needs to know
about statuses.
"""

from __future__ import annotations


class RelayError(Exception):
    status: int = 500
    code: str = "internal"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class BadRequest(RelayError):
    status = 400
    code = "bad_request"


class BadJson(RelayError):
    status = 400
    code = "bad_json"


class BadSignature(RelayError):
    status = 401
    code = "bad_signature"


class Unauthorized(RelayError):
    status = 401
    code = "unauthorized"


class Forbidden(RelayError):
    status = 403
    code = "forbidden"


class NoRoute(RelayError):
    status = 404
    code = "no_route"


class NotFound(RelayError):
    status = 404
    code = "not_found"


class MethodNotAllowed(RelayError):
    status = 405
    code = "method"

    def __init__(self, detail: str, allow: str) -> None:
        super().__init__(detail)
        self.allow = allow


class TooLarge(RelayError):
    status = 413
    code = "too_large"


class MediaType(RelayError):
    status = 415
    code = "media_type"


class Invalid(RelayError):
    status = 422
    code = "invalid"


class RateLimited(RelayError):
    status = 429
    code = "rate_limited"

    def __init__(self, detail: str, retry_after: float) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class Unavailable(RelayError):
    status = 503
    code = "unavailable"

    def __init__(self, detail: str, retry_after: float = 1.0) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class StoreUnavailable(Unavailable):
    """The event store cannot take or give events now (a 503, retry soon)."""

    def __init__(self, detail: str = "the event store is not answering") -> None:
        super().__init__(detail, retry_after=1.0)


class ConfigError(Exception):
    """A config problem: ``problems`` lists (key, message) pairs, all of them."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{k}: {m}" for k, m in problems))
