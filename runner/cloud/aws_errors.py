"""Which of our errors an AWS error answer means, by its code (and, for a code not listed, its HTTP status):
capacity, quota, auth, not found, transient - each with the hint that tells the user what to do. Only
TransientError is retried (aws.py's `_call`). aws.py catches botocore's exceptions where they enter and
hands a ClientError's response here, a plain dict, so the mapping is tested without botocore."""

from __future__ import annotations

from ..errors import AuthError, CapacityError, NotFoundError, ProviderError, QuotaError, TransientError

CAPACITY = {"InsufficientInstanceCapacity", "InsufficientCapacity", "InsufficientHostCapacity",
            "SpotMaxPriceTooLow", "InsufficientFreeAddressesInSubnet", "Unsupported"}
QUOTA = {"VcpuLimitExceeded", "InstanceLimitExceeded", "MaxSpotInstanceCountExceeded", "ResourceLimitExceeded",
         "SecurityGroupLimitExceeded", "RulesPerSecurityGroupLimitExceeded"}
AUTH = {"AuthFailure", "UnauthorizedOperation", "InvalidClientTokenId", "ExpiredToken", "SignatureDoesNotMatch",
        "AccessDenied", "AccessDeniedException", "OptInRequired", "Blocked"}
TRANSIENT = {"RequestLimitExceeded", "Throttling", "ThrottlingException", "InternalError", "InternalFailure",
             "ServiceUnavailable", "Unavailable", "RequestTimeout"}
NOT_FOUND_SUFFIX = (".NotFound", "NotFound", "ParameterNotFound")


def from_response(response: dict, what: str) -> ProviderError:
    """Our error for an AWS error answer (botocore's ClientError.response) to the call doing `what`."""
    code = response.get("Error", {}).get("Code", "")
    text = f"{what}: {code}: {response.get('Error', {}).get('Message', '')}"
    if code in CAPACITY:
        return CapacityError(text, "try another region/zone or instance type, or on-demand instead of spot")
    if code in QUOTA:
        return QuotaError(text, "request a quota increase (Service Quotas: EC2 'Running On-Demand G and VT "
                          "instances' / spot vCPUs) or pick a smaller instance")
    if code in AUTH:
        return AuthError(text, "check the credentials and that infra/iam-policy.json is attached")
    if code in TRANSIENT or response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) >= 500:
        return TransientError(text, "AWS is throttling or failing; retry later")
    if code.endswith(NOT_FOUND_SUFFIX):
        return NotFoundError(text, "check the id or name")
    return ProviderError(text, "see the AWS error code above")
