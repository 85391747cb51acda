"""tether: every piece of work stays tied to its caller's deadline.

The public API, re-exported. Integrations live in subpackages (`tether.http`, `tether.grpc`,
`tether.postgres`, `tether.gateway`) and need their optional extras; this module needs none.
"""

from tether.budgets import Budgets
from tether.chain import Filter, Handler, SafetyNet, chain, server_chain
from tether.deadline import (
    Deadline,
    DeadlineScope,
    TaskGroup,
    check_deadline,
    current_deadline,
    deadline_after,
    deadline_at,
    detached,
    earliest,
    time_remaining,
)
from tether.errors import (
    ChainError,
    DeadlineExceeded,
    InvalidDeadlineHeader,
    TetherError,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from tether.problems import Problem, ProblemType
from tether.request_id import current_request_id, new_request_id, request_id_scope

__version__ = "0.1.0"

__all__ = [
    "Budgets",
    "ChainError",
    "Deadline",
    "DeadlineExceeded",
    "DeadlineScope",
    "Filter",
    "Handler",
    "InvalidDeadlineHeader",
    "Problem",
    "ProblemType",
    "SafetyNet",
    "TaskGroup",
    "TetherError",
    "UpstreamError",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "chain",
    "check_deadline",
    "current_deadline",
    "current_request_id",
    "deadline_after",
    "deadline_at",
    "detached",
    "earliest",
    "new_request_id",
    "request_id_scope",
    "server_chain",
    "time_remaining",
]
