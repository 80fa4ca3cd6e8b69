#include "wire.h"

#include <openssl/sha.h>

namespace gw {
bool model_of(const std::string& raw, std::string& name, std::string& version, std::string* id,
              std::string* content) {
  return each_field(raw.data(), raw.size(), [&](const PbField& f) {
    if (f.wire == 2) {
      if (f.number == 1) name.assign(f.data, f.size);
      if (f.number == 2) version.assign(f.data, f.size);
      if (f.number == 3 && id) id->assign(f.data, f.size);
    }
    if (content && f.number != 2 && f.number != 3) content->append(f.start, f.end - f.start);
  });
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
