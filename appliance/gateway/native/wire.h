// The few protobuf details of ModelInferRequest the front needs (wire.py is the Python twin):
// fields 1 (model_name), 2 (model_version) and 3 (id), and appending fields without
// re-serialising (on the wire the last occurrence of a field, or of a map key, wins).
#pragma once

#include <cstdint>
#include <string>

namespace gw {

// One top-level protobuf field: its number and wire type; a varint's value; a length-delimited
// field's payload.
struct PbField {
  uint64_t number, wire, value;
  const char* data;
  size_t size;
  const char* start;  // where the field (its tag) begins
  const char* end;    // just past it
};

inline bool read_varint(const uint8_t*& p, const uint8_t* end, uint64_t& out) {
  out = 0;
  for (int shift = 0; shift < 64 && p < end; shift += 7) {
    uint8_t byte = *p++;
    out |= static_cast<uint64_t>(byte & 0x7F) << shift;
    if (!(byte & 0x80)) return true;
  }
  return false;
}

// Calls `visit` with each top-level field of a message, in order; false if it is not
// well-formed protobuf (the wire types the inference protocol uses: varint, 64-bit,
// length-delimited, 32-bit).
template <typename Visit>
bool each_field(const char* data, size_t size, Visit&& visit) {
  const uint8_t* p = reinterpret_cast<const uint8_t*>(data);
  const uint8_t* end = p + size;
  while (p < end) {
    const uint8_t* start = p;
    uint64_t tag;
    if (!read_varint(p, end, tag)) return false;
    PbField f{tag >> 3, tag & 7, 0, nullptr, 0, reinterpret_cast<const char*>(start), nullptr};
    if (f.number == 0 || f.number > 0x1FFFFFFF) return false;
    switch (f.wire) {
      case 0:
        if (!read_varint(p, end, f.value)) return false;
        break;
      case 1:
        if (end - p < 8) return false;
        p += 8;
        break;
      case 5:
        if (end - p < 4) return false;
        p += 4;
        break;
      case 2: {
        uint64_t length;
        if (!read_varint(p, end, length) || length > static_cast<uint64_t>(end - p)) return false;
        f.data = reinterpret_cast<const char*>(p);
        f.size = length;
        p += length;
        break;
      }
      default:
        return false;
    }
    f.end = reinterpret_cast<const char*>(p);
    visit(f);
  }
  return true;
}

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
