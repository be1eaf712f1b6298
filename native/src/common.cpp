#include "common.h"

#include "ggml.h"

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <mutex>

namespace sqlr1 {

void fail(const char * code, const char * fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    throw error(code, buf);
}

static std::mutex g_log_mutex;
static std::string g_last_error;
static bool g_debug = false;

static void log_callback(ggml_log_level level, const char * text, void *) {
    if (level == GGML_LOG_LEVEL_ERROR) {
        std::lock_guard<std::mutex> lock(g_log_mutex);
        g_last_error = text;
        while (!g_last_error.empty() && (g_last_error.back() == '\n' || g_last_error.back() == ' ')) g_last_error.pop_back();
    }
    if (g_debug) {
        fputs(text, stderr);
    }
}

void log_init() {
    const char * d = getenv("SQLR1_DEBUG");
    g_debug = d && *d && *d != '0';
    ggml_log_set(log_callback, nullptr);
}

std::string log_last_error() {
    std::lock_guard<std::mutex> lock(g_log_mutex);
    return g_last_error;
}

} // namespace sqlr1
