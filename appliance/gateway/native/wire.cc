#include "wire.h"

#include <openssl/sha.h>

namespace gw {
namespace {

bool read_varint(const uint8_t*& p, const uint8_t* end, uint64_t& out) {
  out = 0;
  for (int shift = 0; shift < 64 && p < end; shift += 7) {
    uint8_t byte = *p++;
    out |= static_cast<uint64_t>(byte & 0x7F) << shift;
    if (!(byte & 0x80)) return true;
  }
  return false;
}

}  // namespace

bool model_of(const std::string& raw, std::string& name, std::string& version, std::string* id,
              std::string* content) {
  const uint8_t* p = reinterpret_cast<const uint8_t*>(raw.data());
  const uint8_t* end = p + raw.size();
  while (p < end) {
    const uint8_t* field_start = p;
    uint64_t tag, value;
    if (!read_varint(p, end, tag)) return false;
    uint64_t field = tag >> 3, wire = tag & 7;
    if (field == 0 || field > 0x1FFFFFFF) return false;
    switch (wire) {
      case 0:
        if (!read_varint(p, end, value)) return false;
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
        if (!read_varint(p, end, value) || value > static_cast<uint64_t>(end - p)) return false;
        if (field == 1) name.assign(reinterpret_cast<const char*>(p), value);
        if (field == 2) version.assign(reinterpret_cast<const char*>(p), value);
        if (field == 3 && id) id->assign(reinterpret_cast<const char*>(p), value);
        p += value;
        break;
      }
      default:
        return false;
    }
    if (content && field != 2 && field != 3) content->append(reinterpret_cast<const char*>(field_start), p - field_start);
  }
  return true;
}

void put_varint(std::string& out, uint64_t n) {
  do {
    uint8_t byte = n & 0x7F;
    n >>= 7;
    out.push_back(static_cast<char>(n ? byte | 0x80 : byte));
  } while (n);
}

void put_bytes_field(std::string& out, uint32_t field, const std::string& payload) {
  put_varint(out, field << 3 | 2);
  put_varint(out, payload.size());
  out += payload;
}

void put_priority(std::string& out, int level) {
  std::string value;
  put_varint(value, 5 << 3 | 0);
  put_varint(value, static_cast<uint64_t>(level));
  std::string entry;
  put_bytes_field(entry, 1, "priority");
  put_bytes_field(entry, 2, value);
  put_bytes_field(out, 4, entry);
}

std::string sha256_hex(const std::string& text) {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(text.data()), text.size(), digest);
  static const char hex[] = "0123456789abcdef";
  std::string out(2 * SHA256_DIGEST_LENGTH, '0');
  for (int i = 0; i < SHA256_DIGEST_LENGTH; ++i) {
    out[2 * i] = hex[digest[i] >> 4];
    out[2 * i + 1] = hex[digest[i] & 15];
  }
  return out;
}

}  // namespace gw
