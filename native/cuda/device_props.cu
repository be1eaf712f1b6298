// A CUDA device's compute capability, for the loader's check that this binary carries code the GPU can run
// (a missing architecture would otherwise fail at the first kernel launch, deep inside ggml).
#include "model.h"

#include <cuda_runtime.h>

namespace sqlr1 {

std::string cuda_compute_capability(int device) {
    int major = 0, minor = 0;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess) {
        cudaGetLastError();  // reset the error state so that later CUDA calls do not report this one
        return "";
    }
    return std::to_string(major) + "." + std::to_string(minor);
}

} // namespace sqlr1
