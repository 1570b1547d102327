// The one-line error a library call throws, for tests of refusals.
#pragma once
#include <gtest/gtest.h>

#include <string>

#include "tensor/error.h"

namespace sae::testing {

// The message of the Error call() throws; a test failure when it throws none or when the message
// runs over more than one line.
template <typename Call>
std::string error_of(Call call) {
  try {
    call();
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << "one line: " << e.what();
    return e.what();
  }
  ADD_FAILURE() << "no error";
  return "";
}

}  // namespace sae::testing
