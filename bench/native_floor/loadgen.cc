// An open-loop load generator in C++ (bench/overload.py --native-load): unary calls of
// one serialized request at a fixed arrival rate, whatever the answers do, with one
// header. On a 2-core VM a Python generator at 1,000 requests/s takes most of a core
// from the gateway and Triton it measures; this one takes a fraction of that.
//
//   loadgen ADDRESS METHOD REQUEST_FILE HEADER_NAME HEADER_VALUE RATE SECONDS TIMEOUT_S
//
// Prints one JSON line: sent, per-status counts, answered-OK latency p50/p99 (ms), the
// seconds from the first arrival to the last answer, and each RESOURCE_EXHAUSTED answer's
// message and time to arrive (ms).
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/support/byte_buffer.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

using Clock = std::chrono::steady_clock;

struct Results {
  std::mutex mu;
  std::condition_variable done;
  std::map<int, long> codes;
  std::vector<double> ok_ms;
  std::vector<std::pair<std::string, double>> refused;  // RESOURCE_EXHAUSTED: message, ms
  long pending = 0;
};

struct Flight {
  grpc::ClientContext context;
  grpc::ByteBuffer request, response;
  Clock::time_point started;
};

int main(int argc, char** argv) {
  if (argc != 9) {
    std::cerr << "usage: loadgen ADDRESS METHOD REQUEST_FILE HEADER_NAME HEADER_VALUE RATE SECONDS TIMEOUT_S\n";
    return 2;
  }
  std::string address = argv[1], method = argv[2], header = argv[4], value = argv[5];
  double rate = std::stod(argv[6]), seconds = std::stod(argv[7]), timeout = std::stod(argv[8]);
  std::ifstream in(argv[3], std::ios::binary);
  std::stringstream raw;
  raw << in.rdbuf();
  std::string body = raw.str();

  grpc::GenericStub stub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  Results results;
  long total = static_cast<long>(rate * seconds);
  auto began = Clock::now();
  for (long i = 0; i < total; ++i) {
    std::this_thread::sleep_until(began + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(i / rate)));
    auto* flight = new Flight;
    grpc::Slice slice(body);
    flight->request = grpc::ByteBuffer(&slice, 1);
    flight->context.AddMetadata(header, value);
    flight->context.set_deadline(std::chrono::system_clock::now() +
                                 std::chrono::duration_cast<std::chrono::system_clock::duration>(
                                     std::chrono::duration<double>(timeout)));
    flight->started = Clock::now();
    {
      std::lock_guard<std::mutex> lock(results.mu);
      results.pending++;
    }
    stub.UnaryCall(&flight->context, method, grpc::StubOptions(), &flight->request, &flight->response,
                   [flight, &results](grpc::Status status) {
                     double ms = std::chrono::duration<double, std::milli>(Clock::now() - flight->started).count();
                     delete flight;
                     std::lock_guard<std::mutex> lock(results.mu);
                     results.codes[static_cast<int>(status.error_code())]++;
                     if (status.ok()) results.ok_ms.push_back(ms);
                     if (status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED)
                       results.refused.emplace_back(status.error_message(), ms);
                     if (--results.pending == 0) results.done.notify_all();
                   });
  }
  std::unique_lock<std::mutex> lock(results.mu);
  results.done.wait(lock, [&] { return results.pending == 0; });
  double elapsed = std::chrono::duration<double>(Clock::now() - began).count();
  std::sort(results.ok_ms.begin(), results.ok_ms.end());
  auto pct = [&](double q) {
    if (results.ok_ms.empty()) return 0.0;
    size_t index = std::min(results.ok_ms.size() - 1, static_cast<size_t>(q * (results.ok_ms.size() - 1) + 0.5));
    return results.ok_ms[index];
  };
  std::cout << "{\"sent\": " << total << ", \"seconds\": " << elapsed << ", \"p50_ms\": " << pct(0.5)
            << ", \"p99_ms\": " << pct(0.99) << ", \"codes\": {";
  bool first = true;
  for (const auto& [code, count] : results.codes) {
    std::cout << (first ? "" : ", ") << "\"" << code << "\": " << count;
    first = false;
  }
  std::cout << "}, \"refused\": [";
  first = true;
  for (const auto& [message, ms] : results.refused) {
    std::string text;
    for (char c : message)
      if (c != '"' && c != '\\' && static_cast<unsigned char>(c) >= 0x20) text += c;  // JSON-safe
    std::cout << (first ? "" : ", ") << "[\"" << text << "\", " << ms << "]";
    first = false;
  }
  std::cout << "]}" << std::endl;
  return 0;
}
