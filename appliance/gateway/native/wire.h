// The few protobuf details of ModelInferRequest the front needs (wire.py is the Python twin):
// fields 1 (model_name), 2 (model_version) and 3 (id), and appending fields without
// re-serialising (on the wire the last occurrence of a field, or of a map key, wins).
#pragma once

#include <cstdint>
#include <string>

namespace gw {

// Scans the top level of the message; false if it is not well-formed protobuf. `content`, when
// asked for, gets the message without its version and id (fields 2 and 3): what the exact
// cache's key hashes (wire.py content_of).
bool model_of(const std::string& raw, std::string& name, std::string& version, std::string* id = nullptr,
              std::string* content = nullptr);

void put_varint(std::string& out, uint64_t n);
void put_bytes_field(std::string& out, uint32_t field, const std::string& payload);
// ModelInferRequest.parameters["priority"] = InferParameter{uint64_param: level} (field 4, a map).
void put_priority(std::string& out, int level);

std::string sha256_hex(const std::string& text);

}  // namespace gw
