// The stream the project's CUDA kernels run on (one per device; ggml's backend runs its graphs on its own).
// Called alone, each kernel entry point waits for its work before it returns. While a queue_scope is open on
// the calling thread, entry points only queue their work: the training passes order it against ggml's stream
// with events and wait once at the pass's end, so the GPU does not idle while the host builds the next graph.
#pragma once

namespace sqlr1 {

#ifdef SQLR1_WITH_CUDA
class queue_scope {
public:
    queue_scope();
    ~queue_scope();
    queue_scope(const queue_scope &) = delete;
    queue_scope & operator=(const queue_scope &) = delete;
};

// `device_ptr` names the device (any of its memory); events are cudaEvent_t made on that device.
void project_stream_wait(const void * device_ptr, void * event);    // later project work waits for the event
void project_stream_record(const void * device_ptr, void * event);  // the event marks the project work queued so far
void project_stream_sync(const void * device_ptr);                  // waits for it (ERR_INTERNAL on a kernel error)
#endif

} // namespace sqlr1
