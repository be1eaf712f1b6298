// NCCL for data-parallel training, loaded at run time (dlopen) so that single-GPU installs need nothing new:
// the library is looked for only when a run of several ranks asks for it. The functions used are declared
// here (NCCL's ABI for them has been stable since 2.4); the device side (staging host buffers through GPU
// memory, polling for completion with NCCL's asynchronous error check and a timeout) is in native/cuda/nccl.cu.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace sqlr1::nccl {

// NCCL's own types, as its header declares them.
using result_t = int;
using comm_t = struct opaque_comm *;
struct unique_id { char internal[128]; };
enum : int { success = 0, in_progress = 7 };
enum : int { float32 = 7 };   // ncclFloat32
enum : int { sum = 0 };       // ncclSum

// The oldest NCCL accepted. The functions used, ncclCommGetAsyncError and ncclCommAbort included (the timeout
// relies on them), exist since 2.4; the floor only keeps out releases far older than those built for the CUDA 13
// this addon links against.
constexpr int min_version = 21800;

struct api {
    std::string path;   // what was opened
    int version = 0;    // ncclGetVersion's code: 22304 for 2.23.4
    result_t (*get_version)(int *) = nullptr;
    result_t (*get_unique_id)(unique_id *) = nullptr;
    result_t (*comm_init_rank)(comm_t *, int, unique_id, int) = nullptr;
    result_t (*all_reduce)(const void *, void *, size_t, int, int, comm_t, void *) = nullptr;
    result_t (*broadcast)(const void *, void *, size_t, int, int, comm_t, void *) = nullptr;
    result_t (*comm_get_async_error)(comm_t, result_t *) = nullptr;
    result_t (*comm_abort)(comm_t) = nullptr;
    result_t (*comm_destroy)(comm_t) = nullptr;
    const char * (*get_error_string)(result_t) = nullptr;
};

// Opens the library once per process: `path` when given (SQLR1_NCCL_LIBRARY), else libnccl.so.2 through the
// dynamic loader's search (LD_LIBRARY_PATH). ERR_NCCL names the library and what was wrong with it (missing,
// a function missing, older than min_version). A later call with another path fails the same way.
const api & load(const std::string & path);

// A new id for ncclCommInitRank (rank 0 makes it and hands it to the others).
unique_id make_unique_id(const api & a);

// "2.23.4" from 22304.
std::string version_string(int code);

// One rank's communicator on a CUDA device, with its own stream and a device buffer that host data is staged
// through. Operations on one communicator run one at a time (a mutex); a failed or timed-out operation aborts
// the communicator, and every later call fails with ERR_DISTRIBUTED.
class communicator {
public:
    virtual ~communicator() = default;
    // In place on host memory: sum over ranks, or rank `root`'s values on every rank.
    virtual void all_reduce_sum(float * data, size_t n, int timeout_ms) = 0;
    virtual void broadcast(float * data, size_t n, int root, int timeout_ms) = 0;
    virtual void close() = 0;
};

// Joins the communicator (blocks until every rank has joined: call it off the JS thread). ERR_NCCL where this
// build has no CUDA.
std::shared_ptr<communicator> init_rank(const api & a, const unique_id & id, int nranks, int rank, int device);

} // namespace sqlr1::nccl
