// One device, one queue. Every piece of work that runs ggml on a device (graphs, the project's kernels, tensor
// reads and writes, allocations that upload data) goes through that device's executor: a dedicated thread that
// runs the pieces one at a time, in the order they were submitted from JavaScript. Models, their contexts,
// their adapters' parameter stores and their trainers share their device's executor (two models on one device
// too), so overlapping calls (Promise.all, a trainer overlapping rollouts with scoring) serialize instead of
// sharing a backend's work buffer or a stream mid-run.
//
// Asynchronous calls submit a task and return a Promise, settled on the JS thread when the task has run
// (napi_helpers.h: submit). Synchronous calls that read or write device state run through the queue and wait
// (run_sync), so they see every earlier call's effect and no later one's. One thread per device rather than
// libuv's pool: queued device work parks no pool thread, so file I/O and other addons keep their workers.
#pragma once

#include <condition_variable>
#include <deque>
#include <exception>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

namespace sqlr1 {

class executor {
public:
    explicit executor(std::string key);
    ~executor();
    executor(const executor &) = delete;
    executor & operator=(const executor &) = delete;

    const std::string & key() const { return key_; }

    // Queues `task` behind everything submitted before it. The task must not throw (wrap it).
    void submit(std::function<void()> task);

    // Runs `fn` on the executor after everything submitted before it and waits; rethrows what `fn` threw.
    // Called from the executor's own thread (a task that needs it), `fn` runs at once.
    template <typename F>
    auto run_sync(F && fn) -> decltype(fn()) {
        using R = decltype(fn());
        if (on_thread()) return fn();
        std::packaged_task<R()> job(std::forward<F>(fn));
        std::future<R> result = job.get_future();
        submit([&job]() { job(); });
        return result.get();
    }

    bool on_thread() const;

private:
    struct state;
    static void loop(std::shared_ptr<state> st);
    std::string key_;
    std::shared_ptr<state> st_;
};

// The executor of a device ("cpu" or "cuda", the names backend_set_init takes), made on first use and shared
// while anything holds it. ERR_INVALID_ARG for any other name.
std::shared_ptr<executor> executor_for(const std::string & device);

} // namespace sqlr1
