// Shared helpers of the C++ unit tests (csrc/tests/test_*.cpp, one ctest executable each):
// a failure counter, EXPECT (count, print, go on) and expect_error (the op's ValueError message
// must start with a given prefix).
#pragma once

#include <c10/util/Exception.h>

#include <cstdio>
#include <string>

inline int failures = 0;

#define EXPECT(cond, ...)                                          \
  do {                                                             \
    if (!(cond)) {                                                 \
      ++failures;                                                  \
      std::printf("FAIL %s:%d: %s | ", __FILE__, __LINE__, #cond); \
      std::printf(__VA_ARGS__);                                    \
      std::printf("\n");                                           \
    }                                                              \
  } while (0)

template <typename F>
void expect_error(F&& f, const std::string& prefix) {
  try {
    f();
    EXPECT(false, "no error, expected '%s'", prefix.c_str());
  } catch (const c10::ValueError& e) {
    const std::string msg = e.what_without_backtrace();
    EXPECT(msg.rfind(prefix, 0) == 0, "message '%s' does not start with '%s'", msg.c_str(), prefix.c_str());
  }
}
