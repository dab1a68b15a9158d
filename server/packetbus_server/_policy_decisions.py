"""What the policy decided about a dispatched packet, as its DispatchResult says it
and as the metrics count it: rejected (PERMISSION_DENIED with a POLICY_REJECTED
ErrorInfo), held (the rule and reason), or stored before (a receipt)."""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from packetbus.v1 import packet_service_pb2

from . import _status
from ._observability import counting, metrics
from ._policy_store import Decided
from ._stored_packets import fill_receipt

POLICY_REJECTED = "POLICY_REJECTED"
ERROR_DOMAIN = _status.ERROR_DOMAIN


def rejection(decided: Decided) -> status_pb2.Status:
    """A rejected packet's result: PERMISSION_DENIED, the rule in an ErrorInfo detail."""
    info = error_details_pb2.ErrorInfo(
        reason=POLICY_REJECTED,
        domain=ERROR_DOMAIN,
        metadata={
            "rule_id": decided.rule_id,
            "rule_reason": decided.reason,
            "policy_version": decided.version,
            "carcel_entry_id": decided.id,
        },
    )
    packed = any_pb2.Any()
    packed.Pack(info)
    rule = f"rule {decided.rule_id!r}" if decided.rule_id else "a rule"
    return status_pb2.Status(
        code=code_pb2.PERMISSION_DENIED,
        message=f"rejected by policy {rule}: {decided.reason}; in the carcel as {decided.id}",
        details=[packed],
    )


def fill_decided(result: packet_service_pb2.DispatchResult, topic: str, decided: Decided) -> None:
    """Fill a packet's result with what the policy's record says: rejected (the error
    rejection() builds), held (rule, reason, policy version), stored before (its
    receipt), or its tracking id taken by another packet (ALREADY_EXISTS)."""
    if decided.status == "rejected":
        result.error.CopyFrom(rejection(decided))
    elif decided.status == "held":
        result.held.rule_id = decided.rule_id
        result.held.reason = decided.reason
        result.held.policy_version = decided.version
    elif decided.status == "stored":
        fill_receipt(result.receipt, topic, decided.id, decided.expiry_ms)
    else:
        result.error.CopyFrom(
            _status.with_reason(
                code_pb2.ALREADY_EXISTS,
                f"tracking_id {result.tracking_id} is already used by a different packet",
                "TRACKING_ID_IN_USE",
            )
        )


def count_decided(outcomes: Sequence[Decided]) -> None:
    """Count what the policy's decisions came to: rejected (POLICY_REJECTED) and held
    by rule; a packet stored before the rule (a resend) as deduplicated; a tracking
    id another packet holds as rejected (ALREADY_EXISTS)."""
    totals: dict[tuple[str, str], int] = {}
    for outcome in outcomes:
        key = (outcome.status, outcome.rule_id)
        totals[key] = totals.get(key, 0) + 1
    for (status, rule), n in totals.items():
        if status == "rejected":
            counting.rejected_as(POLICY_REJECTED, n, rule)
        elif status == "held":
            metrics.packets_held.labels(rule).inc(n)
        elif status == "stored":
            counting.deduplicated(n)
        else:
            counting.rejected_as("ALREADY_EXISTS", n)
