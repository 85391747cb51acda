"""The services and callers the toolkit benchmarks run (timed and counted alike)."""

# The budget the benchmarks' callers run under: within the servers' default `max_budget`
# (60 s), as between tether services. A longer one is clamped by a tether gRPC server, which
# then arms a timer of its own (grpc's deadline is no longer the call's): counted, a call with
# tether's timer costs the server 7,000-9,500 instructions more (tether server, plain client vs
# tether's client).
CALLER_BUDGET = 30.0
