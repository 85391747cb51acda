"""tether for gRPC: server interceptors and budget-passing channels (the `grpc` extra), for
grpc.aio and for grpc's synchronous API.

server = tether.grpc.server(default_budget=5)          # tether's interceptor first
channel = tether.grpc.insecure_channel("127.0.0.1:50051")  # calls pass the budget on
blocking = tether.grpc.sync_insecure_channel("127.0.0.1:50051")  # the same, from threads
threaded = tether.grpc.sync_server(ThreadPoolExecutor(16))  # grpc's synchronous server
"""

from tether.grpc.client import Channel, TetherClientInterceptor, insecure_channel, secure_channel
from tether.grpc.server import TetherServerInterceptor, server
from tether.grpc.sync_client import SyncChannel, sync_insecure_channel, sync_secure_channel
from tether.grpc.sync_server import TetherSyncServerInterceptor, sync_server

__all__ = [
    "Channel",
    "SyncChannel",
    "TetherClientInterceptor",
    "TetherServerInterceptor",
    "TetherSyncServerInterceptor",
    "insecure_channel",
    "secure_channel",
    "server",
    "sync_insecure_channel",
    "sync_secure_channel",
    "sync_server",
]
