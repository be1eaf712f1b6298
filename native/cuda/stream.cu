// See stream.h.
#include "stream.h"
#include "cuda_check.h"

#include <mutex>

namespace sqlr1 {

namespace {
thread_local int queue_depth = 0;
} // namespace

queue_scope::queue_scope() { queue_depth++; }
queue_scope::~queue_scope() { queue_depth--; }

cudaStream_t project_stream(const void * ptr) {
    cudaPointerAttributes at{};
    cuda_check(cudaPointerGetAttributes(&at, ptr), "cudaPointerGetAttributes");
    if (at.type != cudaMemoryTypeDevice) fail("ERR_INTERNAL", "the project's kernels need device memory");
    if (at.device < 0 || at.device >= 64) fail("ERR_INTERNAL", "CUDA device index %d out of range", at.device);
    cuda_check(cudaSetDevice(at.device), "cudaSetDevice");
    static std::mutex mu;
    static cudaStream_t streams[64] = {};
    std::lock_guard<std::mutex> lock(mu);
    // Non-blocking: no implicit ordering with the legacy default stream; ordering is the callers' (events).
    if (!streams[at.device]) cuda_check(cudaStreamCreateWithFlags(&streams[at.device], cudaStreamNonBlocking), "cudaStreamCreate");
    return streams[at.device];
}

void project_launched(cudaStream_t st, const char * what) {
    cuda_check(cudaGetLastError(), what);
    if (queue_depth == 0) cuda_check(cudaStreamSynchronize(st), what);
}

void project_stream_wait(const void * device_ptr, void * event) {
    cuda_check(cudaStreamWaitEvent(project_stream(device_ptr), (cudaEvent_t) event, 0), "cudaStreamWaitEvent");
}

void project_stream_record(const void * device_ptr, void * event) {
    cuda_check(cudaEventRecord((cudaEvent_t) event, project_stream(device_ptr)), "cudaEventRecord");
}

void project_stream_sync(const void * device_ptr) {
    cuda_check(cudaStreamSynchronize(project_stream(device_ptr)), "the project's queued kernels");
}

} // namespace sqlr1
