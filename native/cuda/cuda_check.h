// CUDA runtime errors as the addon's typed errors (ERR_INTERNAL, naming the call), for the project's kernels.
#pragma once

#include "common.h"

#include <cuda_runtime.h>

namespace sqlr1 {

inline void cuda_check(cudaError_t e, const char * what) {
    if (e != cudaSuccess) fail("ERR_INTERNAL", "CUDA error in %s: %s", what, cudaGetErrorString(e));
}

} // namespace sqlr1
