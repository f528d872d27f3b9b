"""The HTTP edge's one table from a refusal's code (common/errors.py) to its status.

Domain code raises a code and a message; only here does a code become a status. A code missing
from STATUS is a bug (tests/unit/test_error_codes.py finds every code raised in the code base and
checks it is here); at run time it answers 500 through the error middleware's last resort.
"""

from __future__ import annotations

from billing.gateway import CardError
from common.errors import Refused

STATUS: dict[str, int] = {
    # the request itself
    "bad_request": 400,
    "malformed_json": 400,
    "idempotency_key_required": 400,
    "request_timeout": 408,
    "too_large": 413,
    "too_many_pixels": 413,
    "unsupported_media_type": 415,
    "invalid_image": 415,
    "range_not_satisfiable": 416,
    "invalid_input": 422,
    "invalid_settings": 422,
    "invalid_timezone": 422,
    "too_many_rows": 422,
    # who is asking
    "unauthorized": 401,
    "invalid_credentials": 401,
    "invalid_token": 400,  # a password-reset link unknown, used or expired (server/resets.py)
    "device_required": 401,
    "forbidden": 403,
    "forbidden_origin": 403,
    "unknown_device": 403,
    "privileged": 403,
    "already_authenticated": 409,
    "email_taken": 409,
    "inmate_number_taken": 409,
    # limits (a `retry_after_s` detail becomes a Retry-After header)
    "attempt_in_progress": 429,
    "too_many_attempts": 429,
    "upload_in_progress": 429,
    "too_many_uploads": 429,
    "too_many_connections": 429,
    "busy": 503,
    "unavailable": 503,
    "relay_full": 503,
    "media_unavailable": 503,
    # things and their state
    "not_found": 404,
    "email_off": 404,  # POST /auth/reset where no SMTP relay is configured
    "push_off": 404,  # the Web Push routes where no VAPID key is configured
    "idempotency_conflict": 409,
    # contacts and messages
    "not_connected": 403,
    "blocked": 403,
    "not_requested": 409,
    "already_reviewed": 409,
    "empty_message": 422,
    "too_long": 422,
    "too_many_photos": 422,
    "invalid_photo": 422,
    # money: the ledger (billing/ledger.py), purchases (billing/pricing.py, billing/gateway.py)
    "insufficient_credits": 402,
    "exists_with_different_amount": 409,
    "account_not_found": 404,
    "invalid_amount": 422,
    "same_account": 422,
    "card_declined": 402,
    "invalid_card": 422,
    "unsupported_card": 422,
    "card_expired": 422,
    # hosted checkout (billing/hosted.py, billing/checkout.py)
    "checkout_expired": 410,
    "invalid_confirmation": 422,
    "confirmation_mismatch": 409,
    # visits: booking (signalling/booking.py) and calls (signalling/visits.py)
    "in_the_past": 422,
    "beyond_horizon": 422,
    "not_on_grid": 422,
    "outside_hours": 422,
    "slot_taken": 409,
    "no_capacity": 409,
    "too_late_to_cancel": 409,
    "not_scheduled": 409,
    "too_early": 409,
    "visit_over": 409,
    "not_in_call": 409,
    "not_joined": 409,
    "not_relayed": 409,
    "janus_media": 409,
    "invalid_signal": 422,
    "invalid_sdp": 422,
    "invalid_candidate": 422,
}


def status_of(exc: Refused) -> int:
    """The HTTP status of a refusal. One rule besides the table: a card its issuer declined is
    402 Payment Required whatever the decline's code (the sandbox's expired test card says
    `card_expired`, 402; our own expiry check says the same code, 422)."""
    if isinstance(exc, CardError) and exc.declined:
        return 402
    return STATUS[exc.code]
