// gatewayd: the gateway's native front (docs/architecture.md, "The gateway"). It owns the public
// gRPC port and answers the hot path itself: unary ModelInfer for a known API key, to a model
// with live, permitted replicas and no semantic cache. It authenticates (SHA-256 of the bearer
// key), checks the grant and the key's scope, applies the residency policy and tenant slices,
// takes the tenant's rate limit and daily quota, answers from the exact response cache when it
// can, follows a rollout's traffic split, picks the less loaded of two replicas, admits through
// the adaptive limits and priority queue, retries once elsewhere when a replica was not there,
// and counts into the same Redis statistics as the Python plane and its own Prometheus endpoint.
//
// Everything else -- other methods, streams, unknown or expired keys, models with the semantic
// cache or no live replica (wake-ups, policy denials and their audit) -- is handed, bytes and
// metadata unchanged, to the full Python gateway on a loopback port. So is every call while the
// front has no snapshot it could load: it never answers from an old view.
//
// Whatever both planes must agree on comes from contract.h, generated from
// appliance/gateway/contract.py. Units: snapshot (the control-plane view), wire (protobuf
// details), admission (limits and queues), stores (quotas, response cache), counters
// (statistics, Prometheus), call (one call on the port), main (this: options, the server, the
// metrics endpoint, housekeeping). Built by `make native` into var/build/gatewayd; started by
// `manage.py run_gateway --native`, never by hand.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <thread>

#include "call.h"
#include "contract.h"

namespace {

std::atomic<bool> stopping{false};

// A tiny HTTP endpoint for Prometheus: GET anything answers the exposition.
void serve_metrics(const std::string& bind, gw::Front* front, gw::Counters* counters, gw::SnapshotFile* snapshots) {
  auto colon = bind.rfind(':');
  std::string host = bind.substr(0, colon);
  int port = std::stoi(bind.substr(colon + 1));
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  if (inet_pton(AF_INET, host.c_str(), &addr.sin_addr) != 1 ||
      ::bind(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0 || listen(fd, 16) != 0) {
    std::cerr << "gatewayd: cannot serve metrics on " << bind << std::endl;
    std::_Exit(1);
  }
  std::thread([fd, front, counters, snapshots] {
    for (;;) {
      int client = accept(fd, nullptr, nullptr);
      if (client < 0) continue;
      struct timeval timeout {2, 0};
      setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
      char buffer[4096];
      std::string request;
      while (request.find("\r\n\r\n") == std::string::npos && request.size() < 65536) {
        ssize_t n = recv(client, buffer, sizeof(buffer), 0);
        if (n <= 0) break;
        request.append(buffer, n);
      }
      std::string body = counters->exposition(front->replicas(), snapshots->current() != nullptr, snapshots->refusals(),
                                             snapshots->loaded_written());
      std::string head = "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
                         "Content-Length: " + std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n";
      std::string reply = head + body;
      size_t sent = 0;
      while (sent < reply.size()) {
        ssize_t n = ::send(client, reply.data() + sent, reply.size() - sent, MSG_NOSIGNAL);
        if (n <= 0) break;
        sent += n;
      }
      close(client);
    }
  }).detach();
}

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

}  // namespace

int main(int argc, char** argv) {
  std::map<std::string, std::string> options;
  for (int i = 1; i + 1 < argc; i += 2) options[argv[i]] = argv[i + 1];
  for (const char* required : {"--listen", "--full", "--snapshot"}) {
    if (!options.count(required)) {
      std::cerr << "usage: gatewayd --listen HOST:PORT --full HOST:PORT --snapshot FILE [--redis HOST:PORT/DB]\n"
                   "                [--metrics-bind HOST:PORT] [--tls-cert PEM --tls-key PEM [--tls-client-ca PEM]]\n";
      return 2;
    }
  }
  gw::SnapshotFile snapshots(options["--snapshot"]);
  snapshots.poll();
  gw::Counters counters;
  gw::RedisLink redis = gw::parse_redis(options.count("--redis") ? options["--redis"] : "127.0.0.1:6379/0");
  gw::Front front(options["--full"], &snapshots, &counters, redis);

  grpc::ServerBuilder builder;
  std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials();
  if (options.count("--tls-cert")) {
    grpc::SslServerCredentialsOptions tls;
    tls.pem_key_cert_pairs.push_back({slurp(options["--tls-key"]), slurp(options["--tls-cert"])});
    if (options.count("--tls-client-ca")) {
      tls.pem_root_certs = slurp(options["--tls-client-ca"]);
      tls.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
    }
    credentials = grpc::SslServerCredentials(tls);
  }
  int port = 0;
  builder.AddListeningPort(options["--listen"], credentials, &port);
  builder.SetMaxReceiveMessageSize(256 * 1024 * 1024);
  builder.SetMaxSendMessageSize(256 * 1024 * 1024);
  builder.RegisterCallbackGenericService(&front);
  auto server = builder.BuildAndStart();
  if (!server || port == 0) {
    std::cerr << "gatewayd: cannot listen on " << options["--listen"] << std::endl;
    std::_Exit(1);  // not `return`: destructors would wait on the Redis threads' queues forever
  }
  if (options.count("--metrics-bind") && !options["--metrics-bind"].empty())
    serve_metrics(options["--metrics-bind"], &front, &counters, &snapshots);

  std::signal(SIGTERM, [](int) { stopping = true; });
  std::signal(SIGINT, [](int) { stopping = true; });
  std::cout << "gatewayd: listening on " << options["--listen"] << ", full gateway at " << options["--full"]
            << " (snapshot version " << contract::kSnapshotVersion << ")" << std::endl;
  // The housekeeping loop: snapshot reloads every 50 ms, statistics to Redis every FLUSH_S.
  gw::RedisLink statistics = redis;
  const int flush_every = std::max(1, static_cast<int>(contract::kFlushS / 0.05 + 0.5));
  int tick = 0;
  while (!stopping) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    snapshots.poll();
    if (++tick % flush_every == 0) {
      if (auto s = snapshots.current()) counters.set_instance(s->config.instance);
      counters.flush(statistics, gw::unix_now());
    }
  }
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  counters.flush(statistics, gw::unix_now());
  std::cout.flush();
  std::_Exit(0);  // not through destructors: the Redis threads still wait on their queues
}
