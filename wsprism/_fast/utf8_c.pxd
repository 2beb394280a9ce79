# Contract of the compiled UTF-8 validator for other _c modules.

cdef bint utf8_valid_ptr(const unsigned char* p, Py_ssize_t n) noexcept nogil
cpdef bint utf8_valid(object data) except -1
