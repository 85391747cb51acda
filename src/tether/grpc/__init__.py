"""tether for grpc.aio: a server interceptor and client interceptors (the `grpc` extra).

server = tether.grpc.server(default_budget=5)          # tether's interceptor first
channel = tether.grpc.insecure_channel("127.0.0.1:50051")  # calls pass the budget on
"""

from tether.grpc.client import Channel, TetherClientInterceptor, insecure_channel, secure_channel
from tether.grpc.server import TetherServerInterceptor, server

__all__ = [
    "Channel",
    "TetherClientInterceptor",
    "TetherServerInterceptor",
    "insecure_channel",
    "secure_channel",
    "server",
]
