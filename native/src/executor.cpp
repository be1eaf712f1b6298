#include "executor.h"

#include "common.h"

#include <map>

namespace sqlr1 {

// The queue and the thread's flags live apart from the executor, shared with the thread: if the last holder of
// an executor lets go on the executor's own thread (a task's captures), the thread is detached and finishes
// with this state, not with freed memory.
struct executor::state {
    std::mutex mutex;
    std::condition_variable cv;
    std::deque<std::function<void()>> tasks;
    bool stop = false;
    std::thread thread;
};

void executor::loop(std::shared_ptr<state> st) {
    for (;;) {
        std::function<void()> task;
        {
            std::unique_lock<std::mutex> lock(st->mutex);
            st->cv.wait(lock, [&] { return st->stop || !st->tasks.empty(); });
            if (st->tasks.empty()) return;  // stopped and drained
            task = std::move(st->tasks.front());
            st->tasks.pop_front();
        }
        task();
    }
}

executor::executor(std::string key) : key_(std::move(key)), st_(std::make_shared<state>()) {
    st_->thread = std::thread(loop, st_);
}

executor::~executor() {
    {
        std::lock_guard<std::mutex> lock(st_->mutex);
        st_->stop = true;
    }
    st_->cv.notify_one();
    if (on_thread()) st_->thread.detach();
    else st_->thread.join();
}

bool executor::on_thread() const { return std::this_thread::get_id() == st_->thread.get_id(); }

void executor::submit(std::function<void()> task) {
    {
        std::lock_guard<std::mutex> lock(st_->mutex);
        st_->tasks.push_back(std::move(task));
    }
    st_->cv.notify_one();
}

std::shared_ptr<executor> executor_for(const std::string & device) {
    // Device 0 is the only CUDA device a backend is made on (model.cpp: backend_set_init).
    std::string key;
    if (device == "cpu") key = "cpu";
    else if (device == "cuda") key = "cuda:0";
    else fail("ERR_INVALID_ARG", "device must be 'cpu' or 'cuda', got '%s'", device.c_str());
    static std::mutex mutex;
    static std::map<std::string, std::weak_ptr<executor>> executors;
    std::lock_guard<std::mutex> lock(mutex);
    if (auto e = executors[key].lock()) return e;
    auto e = std::make_shared<executor>(key);
    executors[key] = e;
    return e;
}

} // namespace sqlr1
