// Small N-API helpers shared by the addon's source files: JS errors with a `code`, argument readers that fail
// with ERR_INVALID_ARG, Promise-returning device work (submit: through the device's executor) and host work
// (queue: an AsyncWorker on libuv's pool). Internal to native/src (never part of an API).
#pragma once

#include "common.h"
#include "executor.h"

#include <napi.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

namespace sqlr1 {

inline Napi::Error make_error(Napi::Env env, const std::string & code, const std::string & msg) {
    Napi::Error e = Napi::Error::New(env, msg);
    e.Set("code", Napi::String::New(env, code));
    return e;
}

// Runs `fn` and rethrows sqlr1::error as a JS error with a code.
template <typename F>
auto guarded(Napi::Env env, F && fn) -> decltype(fn()) {
    try {
        return fn();
    } catch (const error & e) {
        throw make_error(env, e.code, e.what());
    } catch (const Napi::Error &) {
        throw;
    } catch (const std::exception & e) {
        throw make_error(env, "ERR_INTERNAL", e.what());
    }
}

[[noreturn]] inline void bad_arg(Napi::Env env, const std::string & msg) { throw make_error(env, "ERR_INVALID_ARG", msg); }

inline Napi::Object need_object(const Napi::CallbackInfo & info, size_t i, const char * what) {
    if (info.Length() <= i || !info[i].IsObject()) bad_arg(info.Env(), std::string(what) + " must be an object");
    return info[i].As<Napi::Object>();
}

inline std::string get_string(Napi::Object o, const char * key, const std::string & def, bool required = false) {
    Napi::Value v = o.Get(key);
    if (v.IsUndefined()) {
        if (required) bad_arg(o.Env(), std::string("option '") + key + "' is required");
        return def;
    }
    if (!v.IsString()) bad_arg(o.Env(), std::string("option '") + key + "' must be a string");
    return v.As<Napi::String>().Utf8Value();
}

inline double get_number(Napi::Object o, const char * key, double def) {
    Napi::Value v = o.Get(key);
    if (v.IsUndefined()) return def;
    if (!v.IsNumber()) bad_arg(o.Env(), std::string("option '") + key + "' must be a number");
    const double d = v.As<Napi::Number>().DoubleValue();
    if (!std::isfinite(d)) bad_arg(o.Env(), std::string("option '") + key + "' must be finite");
    return d;
}

inline std::vector<int32_t> get_i32_array(Napi::Object o, const char * key) {
    Napi::Value v = o.Get(key);
    if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
        bad_arg(o.Env(), std::string("option '") + key + "' must be an Int32Array");
    Napi::Int32Array a = v.As<Napi::Int32Array>();
    return std::vector<int32_t>(a.Data(), a.Data() + a.ElementLength());
}

// A Float32Array argument, copied out; with n >= 0 it must hold exactly n values.
inline std::vector<float> get_f32(Napi::Env env, Napi::Value v, const std::string & what, int64_t n = -1) {
    if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array) bad_arg(env, what + " must be a Float32Array");
    Napi::Float32Array a = v.As<Napi::Float32Array>();
    if (n >= 0 && (int64_t) a.ElementLength() != n) bad_arg(env, what + " must hold " + std::to_string(n) + " values");
    return std::vector<float>(a.Data(), a.Data() + a.ElementLength());
}

inline Napi::Float32Array to_js(Napi::Env env, const std::vector<float> & v) {
    Napi::Float32Array a = Napi::Float32Array::New(env, v.size());
    std::copy(v.begin(), v.end(), a.Data());
    return a;
}

// 16-bit words (BF16 values, for the kernels' tests).
inline Napi::Uint16Array to_js(Napi::Env env, const std::vector<uint16_t> & v) {
    Napi::Uint16Array a = Napi::Uint16Array::New(env, v.size());
    std::copy(v.begin(), v.end(), a.Data());
    return a;
}

// A Promise-returning worker: `exec` runs off the main thread, `done` builds the JS value.
template <typename R>
class promise_worker : public Napi::AsyncWorker {
public:
    promise_worker(Napi::Env env, std::function<R()> exec, std::function<Napi::Value(Napi::Env, R &)> done,
                   std::function<void()> finally = nullptr, Napi::Value keep = Napi::Value())
        : Napi::AsyncWorker(env, "sqlr1"), deferred_(Napi::Promise::Deferred::New(env)),
          exec_(std::move(exec)), done_(std::move(done)), finally_(std::move(finally)) {
        if (!keep.IsEmpty() && keep.IsObject()) keep_ = Napi::Persistent(keep.As<Napi::Object>());
    }
    Napi::Promise promise() { return deferred_.Promise(); }

protected:
    void Execute() override {
        try {
            result_ = exec_();
        } catch (const error & e) {
            code_ = e.code;
            SetError(e.what());
        } catch (const std::exception & e) {
            code_ = "ERR_INTERNAL";
            SetError(e.what());
        }
    }
    void OnOK() override {
        if (finally_) finally_();
        Napi::Env env = Env();
        try {
            deferred_.Resolve(done_(env, result_));
        } catch (const Napi::Error & e) {
            deferred_.Reject(e.Value());
        }
    }
    void OnError(const Napi::Error & e) override {
        if (finally_) finally_();
        deferred_.Reject(make_error(Env(), code_, e.Message()).Value());
    }

private:
    Napi::Promise::Deferred deferred_;
    std::function<R()> exec_;
    std::function<Napi::Value(Napi::Env, R &)> done_;
    std::function<void()> finally_;
    Napi::ObjectReference keep_;
    R result_{};
    std::string code_ = "ERR_INTERNAL";
};

// Work that touches no device (file synthesis): an AsyncWorker on libuv's pool.
template <typename R>
Napi::Value queue(Napi::Env env, std::function<R()> exec, std::function<Napi::Value(Napi::Env, R &)> done,
                  std::function<void()> finally = nullptr, Napi::Value keep = Napi::Value()) {
    auto * w = new promise_worker<R>(env, std::move(exec), std::move(done), std::move(finally), keep);
    Napi::Promise p = w->promise();
    w->Queue();
    return p;
}

// Device work: `exec` runs on the device's executor after everything submitted before it; `done` (JS thread)
// builds the Promise's value. The job holds `exec`'s captures (the objects it works on) until it settles, and a
// reference on `keep`; a thread-safe function per call brings the result back to the JS thread and keeps the
// event loop alive meanwhile.
template <typename R>
class device_job {
public:
    device_job(Napi::Env env, std::shared_ptr<executor> ex, std::function<R()> exec, std::function<Napi::Value(Napi::Env, R &)> done,
               Napi::Value keep)
        : deferred_(Napi::Promise::Deferred::New(env)), ex_(std::move(ex)), exec_(std::move(exec)), done_(std::move(done)) {
        if (!keep.IsEmpty() && keep.IsObject()) keep_ = Napi::Persistent(keep.As<Napi::Object>());
        napi_value name;
        napi_create_string_utf8(env, "sqlr1", NAPI_AUTO_LENGTH, &name);
        if (napi_create_threadsafe_function(env, nullptr, nullptr, name, 0, 1, nullptr, nullptr, nullptr, &device_job::settle, &tsfn_) != napi_ok)
            throw make_error(env, "ERR_INTERNAL", "could not create a completion callback");
    }
    Napi::Promise promise() { return deferred_.Promise(); }

    // On the executor's thread.
    void run() {
        try {
            result_ = exec_();
            ok_ = true;
        } catch (const error & e) {
            code_ = e.code;
            message_ = e.what();
        } catch (const std::exception & e) {
            message_ = e.what();
        }
        napi_threadsafe_function f = tsfn_;
        // Unbounded queue: never waits for the JS thread. When the environment is closing the job is left for
        // the process's exit (its references cannot be released off the JS thread).
        napi_call_threadsafe_function(f, this, napi_tsfn_nonblocking);
        napi_release_threadsafe_function(f, napi_tsfn_release);
    }

private:
    // On the JS thread (env null while the environment is torn down).
    static void settle(napi_env env, napi_value, void *, void * data) {
        auto * job = static_cast<device_job *>(data);
        if (!env) {
            job->keep_.SuppressDestruct();
            delete job;
            return;
        }
        Napi::Env e(env);
        Napi::HandleScope scope(e);
        try {
            if (job->ok_) job->deferred_.Resolve(job->done_(e, job->result_));
            else job->deferred_.Reject(make_error(e, job->code_, job->message_).Value());
        } catch (const Napi::Error & err) {
            job->deferred_.Reject(err.Value());
        }
        delete job;
    }

    Napi::Promise::Deferred deferred_;
    std::shared_ptr<executor> ex_;  // alive until the job settles on the JS thread
    std::function<R()> exec_;
    std::function<Napi::Value(Napi::Env, R &)> done_;
    Napi::ObjectReference keep_;
    napi_threadsafe_function tsfn_ = nullptr;
    R result_{};
    bool ok_ = false;
    std::string code_ = "ERR_INTERNAL", message_;
};

template <typename R>
Napi::Value submit(Napi::Env env, const std::shared_ptr<executor> & ex, std::function<R()> exec,
                   std::function<Napi::Value(Napi::Env, R &)> done, Napi::Value keep = Napi::Value()) {
    auto * job = new device_job<R>(env, ex, std::move(exec), std::move(done), keep);
    Napi::Promise p = job->promise();
    ex->submit([job]() { job->run(); });
    return p;
}

// A synchronous call's device work through the executor, with sqlr1::error turned into a JS error.
template <typename F>
auto run_sync(Napi::Env env, executor & ex, F && fn) -> decltype(fn()) {
    return guarded(env, [&]() { return ex.run_sync(std::forward<F>(fn)); });
}

} // namespace sqlr1
