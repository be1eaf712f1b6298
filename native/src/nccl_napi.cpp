#include "nccl_napi.h"

#include "napi_helpers.h"
#include "nccl.h"

#include <cstring>

namespace sqlr1 {

namespace {

using nccl::communicator;

class NcclCommWrap : public Napi::ObjectWrap<NcclCommWrap> {
public:
    static Napi::FunctionReference ctor;
    std::shared_ptr<communicator> c;

    static Napi::Function Init(Napi::Env env) {
        Napi::Function f = DefineClass(env, "NcclCommunicator", {
            InstanceMethod("allReduceSum", &NcclCommWrap::AllReduceSum),
            InstanceMethod("broadcast", &NcclCommWrap::Broadcast),
            InstanceMethod("close", &NcclCommWrap::Close),
        });
        ctor = Napi::Persistent(f);
        return f;
    }
    NcclCommWrap(const Napi::CallbackInfo & info) : Napi::ObjectWrap<NcclCommWrap>(info) {}

    // allReduceSum(buf: Float32Array, timeoutMs) -> Promise<void>: buf becomes the sum over ranks.
    Napi::Value AllReduceSum(const Napi::CallbackInfo & info) {
        return collective(info, [](communicator & c, std::vector<float> & v, int root, int timeout) {
            (void) root;
            c.all_reduce_sum(v.data(), v.size(), timeout);
        }, false);
    }

    // broadcast(buf: Float32Array, root, timeoutMs) -> Promise<void>: buf becomes rank root's.
    Napi::Value Broadcast(const Napi::CallbackInfo & info) {
        return collective(info, [](communicator & c, std::vector<float> & v, int root, int timeout) {
            c.broadcast(v.data(), v.size(), root, timeout);
        }, true);
    }

    // close(): the communicator ends once no collective holds it (one in flight finishes first).
    Napi::Value Close(const Napi::CallbackInfo & info) {
        c.reset();
        return info.Env().Undefined();
    }

private:
    template <typename Fn>
    Napi::Value collective(const Napi::CallbackInfo & info, Fn fn, bool has_root) {
        Napi::Env env = info.Env();
        if (!c) throw make_error(env, "ERR_DISTRIBUTED", "the NCCL communicator is closed");
        if (info.Length() < 1 || !info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
            bad_arg(env, "the buffer must be a Float32Array");
        const size_t t = has_root ? 2 : 1;
        int root = 0;
        if (has_root) {
            if (info.Length() < 2 || !info[1].IsNumber()) bad_arg(env, "root must be a rank number");
            root = info[1].As<Napi::Number>().Int32Value();
        }
        if (info.Length() <= t || !info[t].IsNumber()) bad_arg(env, "timeoutMs must be a number");
        const double timeout = info[t].As<Napi::Number>().DoubleValue();
        if (!(timeout >= 1 && timeout <= 2147483647.0)) bad_arg(env, "timeoutMs must be between 1 and 2^31 - 1");
        Napi::Float32Array arr = info[0].As<Napi::Float32Array>();
        // The worker reads and writes a copy: the caller's array stays untouched off the JS thread.
        auto data = std::make_shared<std::vector<float>>(arr.Data(), arr.Data() + arr.ElementLength());
        auto target = std::make_shared<Napi::Reference<Napi::Float32Array>>(Napi::Persistent(arr));
        auto held = c;
        const int timeout_ms = (int) timeout;
        return queue<int>(env,
            [held, data, fn, root, timeout_ms]() { fn(*held, *data, root, timeout_ms); return 0; },
            [data, target](Napi::Env e, int &) -> Napi::Value {
                Napi::Float32Array out = target->Value();
                if (out.ElementLength() == data->size()) std::memcpy(out.Data(), data->data(), data->size() * sizeof(float));
                return e.Undefined();
            });
    }
};

Napi::FunctionReference NcclCommWrap::ctor;

// The optional library path of load and uniqueId ("" when left out: libnccl.so.2).
std::string library_arg(const Napi::CallbackInfo & info) {
    if (info.Length() == 0 || info[0].IsUndefined()) return "";
    if (!info[0].IsString()) bad_arg(info.Env(), "the NCCL library path must be a string");
    return info[0].As<Napi::String>().Utf8Value();
}

// load(path?: string) -> { path, version, versionString }
Napi::Value Load(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    const std::string path = library_arg(info);
    return guarded(env, [&] {
        const nccl::api & a = nccl::load(path);
        Napi::Object o = Napi::Object::New(env);
        o.Set("path", a.path);
        o.Set("version", (double) a.version);
        o.Set("versionString", nccl::version_string(a.version));
        return o;
    });
}

// uniqueId(path?: string) -> Uint8Array (128 bytes)
Napi::Value UniqueId(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    const std::string path = library_arg(info);
    return guarded(env, [&] {
        const nccl::unique_id id = nccl::make_unique_id(nccl::load(path));
        Napi::Uint8Array out = Napi::Uint8Array::New(env, sizeof(id.internal));
        std::memcpy(out.Data(), id.internal, sizeof(id.internal));
        return out;
    });
}

// init({ id: Uint8Array(128), nranks, rank, device, library? }) -> Promise<NcclCommunicator>. Blocks a pool
// thread until every rank has joined; the caller bounds the wait.
Napi::Value InitRank(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    Napi::Object o = need_object(info, 0, "NCCL init options");
    Napi::Value idv = o.Get("id");
    if (!idv.IsTypedArray() || idv.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array ||
        idv.As<Napi::Uint8Array>().ElementLength() != sizeof(nccl::unique_id::internal))
        bad_arg(env, "id must be a Uint8Array of 128 bytes (nccl.uniqueId() on rank 0)");
    nccl::unique_id id{};
    std::memcpy(id.internal, idv.As<Napi::Uint8Array>().Data(), sizeof(id.internal));
    const double nranks = get_number(o, "nranks", 0), rank = get_number(o, "rank", -1), device = get_number(o, "device", 0);
    if (nranks < 1 || nranks != (int) nranks) bad_arg(env, "nranks must be a positive integer");
    if (rank < 0 || rank >= nranks || rank != (int) rank) bad_arg(env, "rank must be an integer in [0, nranks)");
    if (device < 0 || device != (int) device) bad_arg(env, "device must be a CUDA device index");
    const std::string path = get_string(o, "library", "");
    const nccl::api * a = guarded(env, [&] { return &nccl::load(path); });
    return queue<std::shared_ptr<communicator>>(env,
        [a, id, nranks, rank, device]() { return nccl::init_rank(*a, id, (int) nranks, (int) rank, (int) device); },
        [](Napi::Env, std::shared_ptr<communicator> & c) -> Napi::Value {
            Napi::Object obj = NcclCommWrap::ctor.New({});
            NcclCommWrap::Unwrap(obj)->c = std::move(c);
            return obj;
        });
}

} // namespace

void nccl_register(Napi::Env env, Napi::Object exports) {
    Napi::Object n = Napi::Object::New(env);
    n.Set("load", Napi::Function::New(env, Load));
    n.Set("uniqueId", Napi::Function::New(env, UniqueId));
    n.Set("init", Napi::Function::New(env, InitRank));
    n.Set("Communicator", NcclCommWrap::Init(env));
    exports.Set("nccl", n);
}

} // namespace sqlr1
