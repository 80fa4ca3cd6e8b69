#include "refusals.h"

namespace gw {

int status_code(std::string_view name) {
  for (size_t i = 0; i < contract::kStatusNames.size(); ++i)
    if (contract::kStatusNames[i] == name) return static_cast<int>(i);
  return 2;  // UNKNOWN
}

std::string_view status_name(int code) {
  return code >= 0 && code < static_cast<int>(contract::kStatusNames.size()) ? contract::kStatusNames[code] : "UNKNOWN";
}

Refused refuse(const contract::Refusal& refusal, std::initializer_list<Field> fields) {
  return Refused{status_code(refusal.status), fill(refusal.text, fields)};
}

const contract::Refusal* refusal_named(std::string_view name) {
  for (const auto& [known, refusal] : contract::refusal::kAll)
    if (known == name) return &refusal;
  return nullptr;
}

}  // namespace gw
