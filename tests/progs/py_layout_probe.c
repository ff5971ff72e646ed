/* Prints, from one CPython's own headers, every byte offset that
 * ctprof.capture.cpython.LAYOUTS holds for that version, one "name value"
 * per line.  tests/test_python_frames.py compiles it with
 * -I <include>/python3.X against each interpreter it finds and compares the
 * output with the table.  A field the version does not have (a 3.11+ field
 * on 3.9, say) prints -1, as the table writes it; pthread_tid is filled in
 * at run time from the controller's own libc and is not printed. */
#define Py_BUILD_CORE 1
#include <Python.h>
#include <stddef.h>
#include <stdio.h>
#if PY_VERSION_HEX >= 0x030B0000
#include <internal/pycore_frame.h>
#endif
#include <internal/pycore_runtime.h>
#include <internal/pycore_interp.h>
#include <frameobject.h>

#define P(name, expr) printf("%s %ld\n", name, (long)(expr))

int main(void) {
    P("version", (PY_MAJOR_VERSION << 8) | PY_MINOR_VERSION);
    P("runtime_interpreters_head", offsetof(_PyRuntimeState, interpreters.head));
#if PY_VERSION_HEX >= 0x030C0000
    P("runtime_autotss", offsetof(_PyRuntimeState, autoTSSkey));
#else
    P("runtime_autotss", offsetof(_PyRuntimeState, gilstate.autoTSSkey));
#endif
    P("interp_next", offsetof(PyInterpreterState, next));
#if PY_VERSION_HEX >= 0x030B0000
    P("interp_threads_head", offsetof(PyInterpreterState, threads.head));
#else
    P("interp_threads_head", offsetof(PyInterpreterState, tstate_head));
#endif
    P("tstate_next", offsetof(PyThreadState, next));
    P("tstate_thread_id", offsetof(PyThreadState, thread_id));
#if PY_VERSION_HEX >= 0x030B0000
    P("tstate_native_thread_id", offsetof(PyThreadState, native_thread_id));
#else
    P("tstate_native_thread_id", -1);
#endif

    /* The current frame: 3.13 keeps it in the thread state, 3.11-3.12 in the
     * thread's _PyCFrame, 3.9-3.10 as a PyFrameObject in the thread state. */
#if PY_VERSION_HEX >= 0x030D0000
    P("tstate_frame", offsetof(PyThreadState, current_frame));
    P("cframe_current_frame", -1);
#elif PY_VERSION_HEX >= 0x030B0000
    P("tstate_frame", offsetof(PyThreadState, cframe));
    P("cframe_current_frame", offsetof(_PyCFrame, current_frame));
#else
    P("tstate_frame", offsetof(PyThreadState, frame));
    P("cframe_current_frame", -1);
#endif

#if PY_VERSION_HEX >= 0x030B0000
    P("frame_back", offsetof(_PyInterpreterFrame, previous));
    P("frame_lasti", -1);
#if PY_VERSION_HEX >= 0x030D0000
    P("frame_code", offsetof(_PyInterpreterFrame, f_executable));
    P("frame_instr", offsetof(_PyInterpreterFrame, instr_ptr));
#else
    P("frame_code", offsetof(_PyInterpreterFrame, f_code));
    P("frame_instr", offsetof(_PyInterpreterFrame, prev_instr));
#endif
#if PY_VERSION_HEX >= 0x030C0000
    P("frame_owner", offsetof(_PyInterpreterFrame, owner));
    P("frame_is_entry", -1);
#else
    P("frame_owner", -1);
    P("frame_is_entry", offsetof(_PyInterpreterFrame, is_entry));
#endif
    P("code_adaptive", offsetof(PyCodeObject, co_code_adaptive));
    P("code_qualname", offsetof(PyCodeObject, co_qualname));
    P("code_linetable", offsetof(PyCodeObject, co_linetable));
    P("code_code", -1);
#else
    P("frame_back", offsetof(PyFrameObject, f_back));
    P("frame_code", offsetof(PyFrameObject, f_code));
    P("frame_lasti", offsetof(PyFrameObject, f_lasti));
    P("frame_instr", -1);
    P("frame_owner", -1);
    P("frame_is_entry", -1);
    P("code_adaptive", -1);
    P("code_qualname", -1);
    P("code_code", offsetof(PyCodeObject, co_code));
#if PY_VERSION_HEX >= 0x030A0000
    P("code_linetable", offsetof(PyCodeObject, co_linetable));
#else
    P("code_linetable", offsetof(PyCodeObject, co_lnotab));
#endif
#endif
    P("code_name", offsetof(PyCodeObject, co_name));
    P("code_filename", offsetof(PyCodeObject, co_filename));
    P("code_firstlineno", offsetof(PyCodeObject, co_firstlineno));

    P("unicode_state", offsetof(PyASCIIObject, state));
    P("unicode_length", offsetof(PyASCIIObject, length));
    P("unicode_ascii_data", sizeof(PyASCIIObject));
    P("unicode_compact_data", sizeof(PyCompactUnicodeObject));
    P("bytes_size", offsetof(PyVarObject, ob_size));
    P("bytes_data", offsetof(PyBytesObject, ob_sval));
    return 0;
}
