// The NCCL loader (see nccl.h): dlopen, the functions used, the version check.
#include "nccl.h"

#include "common.h"

#include <dlfcn.h>

#include <mutex>

namespace sqlr1::nccl {

namespace {

std::mutex load_mutex;
std::unique_ptr<api> loaded;

const char * const install_hint =
    "install NCCL 2.18 or later built for CUDA 13 (Debian/Ubuntu: the libnccl2 package from NVIDIA's CUDA repository; "
    "pip: nvidia-nccl-cu13) and put its folder on LD_LIBRARY_PATH, or set SQLR1_NCCL_LIBRARY to the library's path";

template <typename F>
void bind(void * lib, const std::string & path, const char * name, F & fn) {
    fn = reinterpret_cast<F>(dlsym(lib, name));
    if (!fn) fail("ERR_NCCL", "%s has no %s: it is not an NCCL library (%s)", path.c_str(), name, install_hint);
}

} // namespace

std::string version_string(int code) {
    // Since 2.9 the code is major*10000 + minor*100 + patch; before, major*1000 + minor*100 + patch.
    const int major = code >= 10000 ? code / 10000 : code / 1000;
    const int minor = code >= 10000 ? (code / 100) % 100 : (code / 100) % 10;
    return std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(code % 100);
}

const api & load(const std::string & path) {
    std::lock_guard<std::mutex> lock(load_mutex);
    const std::string want = path.empty() ? "libnccl.so.2" : path;
    if (loaded) {
        if (loaded->path != want) fail("ERR_NCCL", "NCCL is already loaded from %s in this process; cannot load %s too", loaded->path.c_str(), want.c_str());
        return *loaded;
    }
    void * lib = dlopen(want.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        const char * why = dlerror();
        fail("ERR_NCCL", "cannot load NCCL (%s): %s; %s", want.c_str(), why ? why : "unknown error", install_hint);
    }
    auto a = std::make_unique<api>();
    a->path = want;
    try {
        bind(lib, want, "ncclGetVersion", a->get_version);
        bind(lib, want, "ncclGetUniqueId", a->get_unique_id);
        bind(lib, want, "ncclCommInitRank", a->comm_init_rank);
        bind(lib, want, "ncclAllReduce", a->all_reduce);
        bind(lib, want, "ncclBroadcast", a->broadcast);
        bind(lib, want, "ncclCommGetAsyncError", a->comm_get_async_error);
        bind(lib, want, "ncclCommAbort", a->comm_abort);
        bind(lib, want, "ncclCommDestroy", a->comm_destroy);
        bind(lib, want, "ncclGetErrorString", a->get_error_string);
        if (a->get_version(&a->version) != success) fail("ERR_NCCL", "%s: ncclGetVersion failed", want.c_str());
        if (a->version < min_version) {
            fail("ERR_NCCL", "%s is NCCL %s, older than the %s needed; %s", want.c_str(), version_string(a->version).c_str(),
                 version_string(min_version).c_str(), install_hint);
        }
    } catch (...) {
        dlclose(lib);
        throw;
    }
    loaded = std::move(a);   // kept open for the process's life: communicators may outlive any one caller
    return *loaded;
}

unique_id make_unique_id(const api & a) {
    unique_id id{};
    const result_t r = a.get_unique_id(&id);
    if (r != success) fail("ERR_NCCL", "ncclGetUniqueId failed: %s", a.get_error_string(r));
    return id;
}

#ifndef SQLR1_WITH_CUDA
std::shared_ptr<communicator> init_rank(const api &, const unique_id &, int, int, int) {
    fail("ERR_NCCL", "NCCL moves data between GPUs: this is the CPU build (install the CUDA package, or train the ranks over TCP)");
}
#endif

} // namespace sqlr1::nccl
