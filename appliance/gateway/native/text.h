// Texts both planes write alike: contract templates filled in, numbers as Python writes them.
#pragma once

#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>

namespace gw {

using Field = std::pair<std::string_view, std::string>;

// The template with each {name} replaced by its value (str.format's simple case, which is all
// the contract's templates use). An unknown name is left as it is, so a test sees it.
std::string fill(std::string_view text, std::initializer_list<Field> fields);

// A float in a refusal's text: %g, as contract.number writes it.
std::string number(double value);

// A float as Python's repr writes it (the shortest text that reads back as the same double):
// what redis-py sends Redis and prometheus_client writes as a bucket bound, so both planes
// send and show the very same numbers.
std::string shortest(double value);

}  // namespace gw
