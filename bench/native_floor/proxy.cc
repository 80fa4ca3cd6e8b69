// A bare native gRPC pass-through (no features): every unary call, whatever its
// method, is forwarded as raw bytes to one upstream address and the answer is
// sent back. It measures the floor a native data plane would start from, beside
// the Python gateway (bench/native_floor.py); it is not part of the appliance.
//
//   g++ -O2 -std=c++17 proxy.cc $(pkg-config --cflags --libs grpc++) -o proxy
//   ./proxy 127.0.0.1:9000 127.0.0.1:8201
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/support/byte_buffer.h>

#include <iostream>
#include <memory>
#include <string>

class Forward final : public grpc::ServerGenericBidiReactor {
 public:
  Forward(grpc::GenericCallbackServerContext* context, grpc::GenericStub* stub) : context_(context), stub_(stub) {
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "no request message"));
      return;
    }
    client_.set_deadline(context_->deadline());
    stub_->UnaryCall(&client_, context_->method(), grpc::StubOptions(), &request_, &response_, [this](grpc::Status status) {
      if (!status.ok()) {
        Finish(status);
        return;
      }
      StartWriteAndFinish(&response_, grpc::WriteOptions(), grpc::Status::OK);
    });
  }

  void OnDone() override { delete this; }

 private:
  grpc::GenericCallbackServerContext* context_;
  grpc::GenericStub* stub_;
  grpc::ClientContext client_;
  grpc::ByteBuffer request_;
  grpc::ByteBuffer response_;
};

class Proxy final : public grpc::CallbackGenericService {
 public:
  explicit Proxy(const std::string& upstream)
      : stub_(std::make_unique<grpc::GenericStub>(grpc::CreateChannel(upstream, grpc::InsecureChannelCredentials()))) {}

  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext* context) override {
    return new Forward(context, stub_.get());
  }

 private:
  std::unique_ptr<grpc::GenericStub> stub_;
};

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: proxy LISTEN_ADDRESS UPSTREAM_ADDRESS\n";
    return 2;
  }
  Proxy proxy(argv[2]);
  grpc::ServerBuilder builder;
  builder.AddListeningPort(argv[1], grpc::InsecureServerCredentials());
  builder.RegisterCallbackGenericService(&proxy);
  auto server = builder.BuildAndStart();
  if (!server) {
    std::cerr << "could not listen on " << argv[1] << "\n";
    return 1;
  }
  std::cout << "listening on " << argv[1] << ", forwarding to " << argv[2] << std::endl;
  server->Wait();
}
