// The refusals the front answers itself: contract.REFUSALS, filled in as the Python plane
// fills them (contract.refusal).
#pragma once

#include <initializer_list>
#include <string>
#include <string_view>

#include "contract.h"
#include "text.h"

namespace gw {

struct Refused {
  int code;  // grpc::StatusCode's number
  std::string text;
};

// The status's number by its name (contract.STATUS_NAMES order is gRPC's); UNKNOWN if unknown.
int status_code(std::string_view name);
std::string_view status_name(int code);

Refused refuse(const contract::Refusal& refusal, std::initializer_list<Field> fields = {});

// By the contract's name ("over_quota"), for the parity tests; nullptr if there is none.
const contract::Refusal* refusal_named(std::string_view name);

}  // namespace gw
