# Contract of the compiled text-frame scans for other _c modules.

cdef bint utf8_valid_ptr(const unsigned char* p, Py_ssize_t n) noexcept nogil
cpdef bint utf8_valid(object data) except -1
cdef bint json_too_deep_ptr(const unsigned char* p, Py_ssize_t n, Py_ssize_t limit) noexcept nogil
cpdef bint json_too_deep(object data, Py_ssize_t limit) except -1
