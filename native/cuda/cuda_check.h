// CUDA runtime errors as the addon's typed errors (ERR_INTERNAL, naming the call), for the project's kernels.
#pragma once

#include "common.h"

#include <cuda_runtime.h>

namespace sqlr1 {

inline void cuda_check(cudaError_t e, const char * what) {
    if (e != cudaSuccess) fail("ERR_INTERNAL", "CUDA error in %s: %s", what, cudaGetErrorString(e));
}

// The project's stream for the device that holds `ptr` (made on first use; that device becomes current). See
// stream.h.
cudaStream_t project_stream(const void * ptr);

// After an entry point's launches on `st`: checks them, and waits for them unless a queue_scope is open.
void project_launched(cudaStream_t st, const char * what);

// Test helpers upload with cudaMemcpy, whose pageable copies may still be in flight when it returns; the
// project's stream does not wait for the legacy stream, so they wait here before launching.
inline void uploads_done() { cuda_check(cudaDeviceSynchronize(), "cudaDeviceSynchronize"); }

} // namespace sqlr1
