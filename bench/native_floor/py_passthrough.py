"""The bare Python pass-through of BRIEF.md's floor: grpc.aio, raw bytes, every unary
method forwarded to one upstream, no features. For bench/native_floor.py only.

    python py_passthrough.py LISTEN_ADDRESS UPSTREAM_ADDRESS
"""

from __future__ import annotations

import asyncio
import sys

import grpc

SERVICE = "inference.GRPCInferenceService"
METHODS = ("ModelInfer", "ModelMetadata", "ModelConfig", "ModelReady", "ServerLive", "ServerReady", "ServerMetadata")


async def main(listen: str, upstream: str) -> None:
    channel = grpc.aio.insecure_channel(upstream)
    calls = {m: channel.unary_unary(f"/{SERVICE}/{m}") for m in METHODS}

    def handler(method: str) -> grpc.RpcMethodHandler:
        async def forward(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            try:
                return await calls[method](request, timeout=context.time_remaining())
            except grpc.aio.AioRpcError as exc:
                await context.abort(exc.code(), exc.details() or "")

        return grpc.unary_unary_rpc_method_handler(forward)

    server = grpc.aio.server()
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, {m: handler(m) for m in METHODS})])
    server.add_insecure_port(listen)
    await server.start()
    print(f"listening on {listen}, forwarding to {upstream}", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
