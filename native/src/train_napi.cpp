#include "train_napi.h"

#include "napi_helpers.h"

#include <cstring>

namespace sqlr1 {

namespace {

class TrainerWrap : public Napi::ObjectWrap<TrainerWrap> {
public:
    static Napi::FunctionReference ctor;
    std::shared_ptr<trainer> t;

    static Napi::Function Init(Napi::Env env) {
        Napi::Function f = DefineClass(env, "Trainer", {
            InstanceMethod("forward", &TrainerWrap::Forward),
            InstanceMethod("backward", &TrainerWrap::Backward),
            InstanceMethod("memory", &TrainerWrap::Memory),
            InstanceMethod("release", &TrainerWrap::Release),
            InstanceMethod("dispose", &TrainerWrap::Dispose),
        });
        ctor = Napi::Persistent(f);
        return f;
    }
    TrainerWrap(const Napi::CallbackInfo & info) : Napi::ObjectWrap<TrainerWrap>(info) {}

    // Calls run on the model's device executor, in submission order with everything else on that device (an
    // AdamW step submitted after a backward runs after it). A queued call keeps the trainer alive.
    std::shared_ptr<trainer> get(Napi::Env env) {
        if (!t) throw make_error(env, "ERR_DISPOSED", "the trainer was disposed");
        return t;
    }

    // forward({ tokens, targets, ns, nt, temperature, adapter, keep, pos?, span? }) -> Promise<Float32Array>
    Napi::Value Forward(const Napi::CallbackInfo & info) {
        Napi::Env env = info.Env();
        auto tr = get(env);
        Napi::Object o = need_object(info, 0, "forward options");
        train_batch b;
        b.tokens = get_i32_array(o, "tokens");
        b.targets = get_i32_array(o, "targets");
        // The optional layout (train_batch::pos, span); checked with the rest by trainer_validate.
        if (!o.Get("pos").IsUndefined()) b.pos = get_i32_array(o, "pos");
        if (!o.Get("span").IsUndefined()) b.span = get_i32_array(o, "span");
        const double ns = get_number(o, "ns", NAN), nt = get_number(o, "nt", NAN);
        if (!(ns >= 1 && ns <= 65536 && std::floor(ns) == ns)) bad_arg(env, "ns must be an integer in [1, 65536]");
        if (!(nt >= 1 && nt <= (1 << 20) && std::floor(nt) == nt)) bad_arg(env, "nt must be an integer in [1, 1048576]");
        b.ns = (int64_t) ns;
        b.nt = (int64_t) nt;
        const double temp = get_number(o, "temperature", 1.0);
        if (!(temp > 0)) bad_arg(env, "temperature must be > 0");
        b.inv_temp = (float) (1.0 / temp);
        const bool use_lora = o.Get("adapter").IsUndefined() ? true : o.Get("adapter").ToBoolean();
        const bool keep = o.Get("keep").ToBoolean();
        guarded(env, [&]() { trainer_validate(*tr, b); return 0; });  // reads only what never changes
        return submit<std::vector<float>>(env, tr->m->backends->exec,
            [tr, b, use_lora, keep]() { return trainer_forward(*tr, b, use_lora, keep); },
            [](Napi::Env env, std::vector<float> & v) -> Napi::Value { return to_js(env, v); },
            info.This());
    }
    // backward(dlogp: Float32Array) -> Promise<void>
    Napi::Value Backward(const Napi::CallbackInfo & info) {
        Napi::Env env = info.Env();
        auto tr = get(env);
        if (info.Length() < 1) bad_arg(env, "backward(dlogp: Float32Array)");
        std::vector<float> dl = get_f32(env, info[0], "dlogp");
        return submit<int>(env, tr->m->backends->exec, [tr, dl]() { trainer_backward(*tr, dl); return 0; },
            [](Napi::Env env, int &) -> Napi::Value { return env.Undefined(); }, info.This());
    }
    Napi::Value Memory(const Napi::CallbackInfo & info) {
        auto tr = get(info.Env());
        const trainer_memory mu = run_sync(info.Env(), *tr->m->backends->exec, [&]() { return trainer_memory_use(*tr); });
        Napi::Object o = Napi::Object::New(info.Env());
        o.Set("fixed", (double) mu.fixed);
        o.Set("kept", (double) mu.kept);
        o.Set("compute", (double) mu.compute);
        return o;
    }
    // After the calls queued before it (their memory is made again by the next call).
    Napi::Value Release(const Napi::CallbackInfo & info) {
        if (t) run_sync(info.Env(), *t->m->backends->exec, [tr = t]() { trainer_release(*tr); });
        return info.Env().Undefined();
    }
    Napi::Value Dispose(const Napi::CallbackInfo & info) {
        t.reset();
        return info.Env().Undefined();
    }
};
Napi::FunctionReference TrainerWrap::ctor;

} // namespace

Napi::Object trainer_to_js(Napi::Env, std::shared_ptr<trainer> t) {
    Napi::Object obj = TrainerWrap::ctor.New({});
    TrainerWrap::Unwrap(obj)->t = std::move(t);
    return obj;
}

void train_register(Napi::Env env, Napi::Object exports) {
    exports.Set("Trainer", TrainerWrap::Init(env));
}

} // namespace sqlr1
