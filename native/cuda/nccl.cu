// NCCL communicators on a CUDA device (see native/src/nccl.h): host data is staged through one device buffer
// per communicator, on the communicator's own stream. Completion is polled rather than waited for, so that a
// rank that died (NCCL's asynchronous error) or fell silent (the timeout) ends the call with an error instead
// of a hang.
#include "nccl.h"

#include "common.h"
#include "cuda_check.h"

#include <chrono>
#include <mutex>
#include <thread>

namespace sqlr1::nccl {

namespace {

class cuda_communicator final : public communicator {
public:
    cuda_communicator(const api & a, const unique_id & id, int nranks, int rank, int device) : a_(a), device_(device) {
        cuda_check(cudaSetDevice(device), "cudaSetDevice");
        cuda_check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
        const result_t r = a_.comm_init_rank(&comm_, nranks, id, rank);
        if (r != success) {
            cudaStreamDestroy(stream_);
            fail("ERR_NCCL", "ncclCommInitRank (rank %d of %d, device %d) failed: %s", rank, nranks, device, a_.get_error_string(r));
        }
    }
    ~cuda_communicator() override { close(); }

    void all_reduce_sum(float * data, size_t n, int timeout_ms) override {
        run("ncclAllReduce", data, n, timeout_ms, [&](float * buf) {
            return a_.all_reduce(buf, buf, n, float32, sum, comm_, stream_);
        });
    }

    void broadcast(float * data, size_t n, int root, int timeout_ms) override {
        run("ncclBroadcast", data, n, timeout_ms, [&](float * buf) {
            return a_.broadcast(buf, buf, n, float32, root, comm_, stream_);
        });
    }

    void close() override {
        std::lock_guard<std::mutex> lock(mutex_);
        if (comm_) {
            // A communicator that failed is aborted (destroy would wait for work that never ends).
            if (failed_) a_.comm_abort(comm_);
            else a_.comm_destroy(comm_);
            comm_ = nullptr;
        }
        if (buf_) { cudaFree(buf_); buf_ = nullptr; cap_ = 0; }
        if (stream_) { cudaStreamDestroy(stream_); stream_ = nullptr; }
    }

private:
    template <typename Op>
    void run(const char * what, float * data, size_t n, int timeout_ms, Op op) {
        std::lock_guard<std::mutex> lock(mutex_);
        if (!comm_) fail("ERR_DISTRIBUTED", "%s: the NCCL communicator is closed%s", what, failed_ ? " after an earlier failure" : "");
        if (n == 0) return;
        cuda_check(cudaSetDevice(device_), "cudaSetDevice");
        if (n > cap_) {
            if (buf_) cuda_check(cudaFree(buf_), "cudaFree");
            buf_ = nullptr;
            cap_ = 0;
            cuda_check(cudaMalloc((void **) &buf_, n * sizeof(float)), "cudaMalloc (NCCL staging buffer)");
            cap_ = n;
        }
        cuda_check(cudaMemcpyAsync(buf_, data, n * sizeof(float), cudaMemcpyHostToDevice, stream_), "cudaMemcpyAsync");
        const result_t r = op(buf_);
        if (r != success && r != in_progress) abort_with(what, a_.get_error_string(r));
        wait_for(what, timeout_ms);
        // Only now: a copy back to pageable memory would block this thread until the collective ends, past any
        // timeout.
        cuda_check(cudaMemcpyAsync(data, buf_, n * sizeof(float), cudaMemcpyDeviceToHost, stream_), "cudaMemcpyAsync");
        cuda_check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
    }

    // Polls the stream until its work is done, NCCL reports an error, or the timeout passes.
    void wait_for(const char * what, int timeout_ms) {
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
        for (;;) {
            const cudaError_t q = cudaStreamQuery(stream_);
            if (q == cudaSuccess) return;
            if (q != cudaErrorNotReady) { failed_ = true; cuda_check(q, what); }
            result_t async = success;
            a_.comm_get_async_error(comm_, &async);
            if (async != success && async != in_progress) abort_with(what, a_.get_error_string(async));
            if (std::chrono::steady_clock::now() > deadline) {
                abort_with(what, ("no answer from the other ranks within " + std::to_string(timeout_ms) + " ms").c_str());
            }
            std::this_thread::sleep_for(std::chrono::microseconds(50));
        }
    }

    [[noreturn]] void abort_with(const char * what, const char * why) {
        failed_ = true;
        a_.comm_abort(comm_);   // ends the operation in flight, so the stream drains
        comm_ = nullptr;
        cudaStreamSynchronize(stream_);
        cudaGetLastError();
        fail("ERR_DISTRIBUTED", "%s failed: %s", what, why);
    }

    const api & a_;
    const int device_;
    comm_t comm_ = nullptr;
    cudaStream_t stream_ = nullptr;
    float * buf_ = nullptr;
    size_t cap_ = 0;
    bool failed_ = false;
    std::mutex mutex_;
};

} // namespace

std::shared_ptr<communicator> init_rank(const api & a, const unique_id & id, int nranks, int rank, int device) {
    return std::make_shared<cuda_communicator>(a, id, nranks, rank, device);
}

} // namespace sqlr1::nccl
