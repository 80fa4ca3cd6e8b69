#include "text.h"

#include <algorithm>
#include <charconv>
#include <cstdio>

namespace gw {

std::string fill(std::string_view text, std::initializer_list<Field> fields) {
  std::string out;
  out.reserve(text.size() + 32);
  size_t i = 0;
  while (i < text.size()) {
    if (text[i] == '{') {
      size_t close = text.find('}', i);
      if (close != std::string_view::npos) {
        std::string_view name = text.substr(i + 1, close - i - 1);
        const Field* found = nullptr;
        for (const auto& field : fields)
          if (field.first == name) found = &field;
        if (found != nullptr) {
          out += found->second;
          i = close + 1;
          continue;
        }
      }
    }
    out.push_back(text[i++]);
  }
  return out;
}

std::string number(double value) {
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), "%g", value);
  return buffer;
}

std::string shortest(double value) {
  // The shortest digits that read back as the same double, written as Python's repr writes
  // them: positional for exponents -4 .. 15 ("0.0005", "1.0", "12.5"), else "1e-05", "1e+16".
  char digits[32];
  auto result = std::to_chars(digits, digits + sizeof(digits), value, std::chars_format::scientific);
  std::string sci(digits, result.ptr);  // "[-]d[.ddd]e[+-]xx"
  if (sci == "inf" || sci == "-inf" || sci == "nan" || sci == "-nan") return sci;
  std::string sign;
  if (sci[0] == '-') {
    sign = "-";
    sci.erase(0, 1);
  }
  auto e = sci.find('e');
  int exponent = std::stoi(sci.substr(e + 1));
  std::string mantissa = sci.substr(0, e);
  mantissa.erase(std::remove(mantissa.begin(), mantissa.end(), '.'), mantissa.end());  // the digits
  if (exponent < -4 || exponent >= 16) {
    std::string out = sign + mantissa.substr(0, 1);
    if (mantissa.size() > 1) out += "." + mantissa.substr(1);
    char tail[16];
    std::snprintf(tail, sizeof(tail), "e%c%02d", exponent < 0 ? '-' : '+', exponent < 0 ? -exponent : exponent);
    return out + tail;
  }
  if (exponent < 0) return sign + "0." + std::string(-exponent - 1, '0') + mantissa;
  if (static_cast<int>(mantissa.size()) <= exponent + 1)
    return sign + mantissa + std::string(exponent + 1 - mantissa.size(), '0') + ".0";
  return sign + mantissa.substr(0, exponent + 1) + "." + mantissa.substr(exponent + 1);
}

}  // namespace gw
