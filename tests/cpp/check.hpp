// The checks of the C++ unit tests: a failed one is reported and counted,
// and the test goes on, so that one run shows every failure.
#pragma once

#include <cstdio>

inline int failures = 0;

#define CHECK(cond)                                                                       \
    do {                                                                                  \
        if (!(cond)) {                                                                    \
            std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
            ++failures;                                                                   \
        }                                                                                 \
    } while (0)

// Whether f() throws an Error (anything else propagates).
template <class Error, class F>
bool throws(F f) {
    try {
        f();
    } catch (const Error&) {
        return true;
    }
    return false;
}
