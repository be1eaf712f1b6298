// Test-only entry points, kept off the addon's production surface: `testHooks()` returns an object with the
// project's CUDA kernels on host arrays (attentionCuda, swigluCuda, dequantQ4_0Cuda), for the tests that check
// them against plain-loop references (test/native/*-cuda.test.ts). Each runs on the CUDA device's executor.
#pragma once

#include <napi.h>

namespace sqlr1 {

Napi::Value test_hooks(const Napi::CallbackInfo & info);

} // namespace sqlr1
