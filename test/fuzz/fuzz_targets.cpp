// libFuzzer harnesses for the native GGUF loaders, one binary per target (built by scripts/fuzz.sh with
// -DSQLR1_FUZZ_TARGET=<n>):
//   1 model    model_load on the input
//   2 adapter  lora_adapter_load against a tiny synthesized model (synth shape "tiny", q4_0), made once at start
//   3 state    param_store_load_state into a small store (w [4, 3], b [3], s []: test/fuzz/targets.ts)
// The loaders take paths, so each input is written to a file in /dev/shm first. An input may load or fail with a
// sqlr1::error; anything else (an abort, a sanitizer report, another exception, a leak, a hang) is a finding.
// SQLR1_FUZZ_WRITE_SEEDS=<dir>: write the target's seed files (files the project's own writers produce) and exit.
#include "adamw.h"
#include "common.h"
#include "lora.h"
#include "model.h"
#include "synth.h"

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <unistd.h>

#ifndef SQLR1_FUZZ_TARGET
#error "define SQLR1_FUZZ_TARGET (1 model, 2 adapter, 3 state)"
#endif

namespace {

std::string g_input;                                // the file each input is written to
std::shared_ptr<sqlr1::backend_set> g_backends;
std::shared_ptr<sqlr1::model> g_model;             // adapter target
std::shared_ptr<sqlr1::param_store> g_store;       // state target

void write_file(const std::string & path, const uint8_t * data, size_t size) {
    FILE * f = fopen(path.c_str(), "wb");
    if (!f || (size && fwrite(data, 1, size, f) != size) || fclose(f) != 0) {
        fprintf(stderr, "cannot write %s\n", path.c_str());
        abort();
    }
}

[[noreturn]] void die(const char * what, const sqlr1::error & e) {
    fprintf(stderr, "%s: %s: %s\n", what, e.code.c_str(), e.what());
    abort();
}

void write_seeds(const std::string & dir) {
    using namespace sqlr1;
#if SQLR1_FUZZ_TARGET == 2
    // Adapters the project writes: rank 1 and 2, all targets and subsets.
    const std::pair<int64_t, uint32_t> kinds[] = {{1, (1u << LORA_N_TARGETS) - 1}, {2, (1u << LORA_Q) | (1u << LORA_V)}, {1, 1u << LORA_DOWN}};
    int k = 0;
    for (const auto & [rank, targets] : kinds) {
        auto a = lora_adapter_init(g_model, rank, 2.0f * (float) rank, targets, (uint64_t) k);
        lora_adapter_save(*a, dir + "/adapter-" + std::to_string(k++) + ".gguf");
    }
#elif SQLR1_FUZZ_TARGET == 3
    param_store_save_state(*g_store, dir + "/state-0.gguf", 7, 1e-3);
    param_store_save_state(*g_store, dir + "/state-1.gguf", 0, 0.5);
#else
    (void) dir;
    fprintf(stderr, "model seeds are written by test/fuzz/make-seeds.ts\n");
#endif
}

} // namespace

extern "C" int LLVMFuzzerInitialize(int *, char ***) {
    sqlr1::log_init();
    const char * shm = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    g_input = std::string(shm) + "/sqlr1-fuzz-" + std::to_string((long) getpid()) + ".gguf";
    try {
        g_backends = sqlr1::backend_set_init("cpu", 1);
#if SQLR1_FUZZ_TARGET == 2
        const std::string model_path = std::string(shm) + "/sqlr1-fuzz-model-" + std::to_string((long) getpid()) + ".gguf";
        sqlr1::synth_options o;
        o.shape = "tiny";
        o.type = "q4_0";
        o.out = model_path;
        o.seed = 7;
        o.n_threads = 1;
        sqlr1::synth_model_write(o);
        g_model = sqlr1::model_load(model_path, g_backends);
        unlink(model_path.c_str());
#elif SQLR1_FUZZ_TARGET == 3
        g_store = sqlr1::param_store_init(g_backends);
        sqlr1::param_store_add(*g_store, "w", {4, 3}, std::vector<float>(12, 0.5f));
        sqlr1::param_store_add(*g_store, "b", {3}, std::vector<float>(3, 0.25f));
        sqlr1::param_store_add(*g_store, "s", {}, std::vector<float>(1, 1.0f));
#endif
        if (const char * dir = getenv("SQLR1_FUZZ_WRITE_SEEDS")) {
            write_seeds(dir);
            exit(0);
        }
    } catch (const sqlr1::error & e) {
        die("fuzz target set-up failed", e);
    }
    atexit([] { unlink(g_input.c_str()); });
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t * data, size_t size) {
    write_file(g_input, data, size);
    try {
#if SQLR1_FUZZ_TARGET == 1
        auto m = sqlr1::model_load(g_input, g_backends);
#elif SQLR1_FUZZ_TARGET == 2
        auto a = sqlr1::lora_adapter_load(g_model, g_input);
#elif SQLR1_FUZZ_TARGET == 3
        sqlr1::param_store_load_state(*g_store, g_input);
#endif
    } catch (const sqlr1::error &) {
        // A typed failure: what a hostile file should get.
    }
    return 0;
}
